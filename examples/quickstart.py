import sglang as sgl
import vortex_torch  # noqa: F401 — installs the VortexConfig adapter
from vortex_torch.engine.sgl.config import VortexConfig

llm = sgl.Engine(
    model_path="Qwen/Qwen3-0.6B",
    page_size=16,
    attention_backend="flashinfer",  # mandatory: SGLang's base backend
    disable_overlap_schedule=True,  # mandatory for Vortex sparsity
    mem_fraction_static=0.85,
    vortex=VortexConfig(
        module_path="path/to/custom_sparse_attention.py",
        module_name="custom_sparse_attention",  # the @register name
        topk_val=30,  # pages kept per query
        layers_skip=[0],  # layer 0 runs full/dense attention
        block_reserved_bos=1,  # always keep the first page (sink)
        block_reserved_eos=1,  # always keep the most-recent page
        max_seq_lens=8192,
    ),
)

out = llm.generate(
    ["The capital of France is"],
    {"temperature": 0.0, "max_new_tokens": 32},
)
print(out[0]["text"])
