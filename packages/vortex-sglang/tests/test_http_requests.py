"""An HTTP client can never choose or load a flow: the VortexConfig comes only from the server's arguments.

What a request can carry is fixed by SGLang's request schemas: ``/generate`` parses its body into
``GenerateReqInput`` (a dataclass validated by FastAPI/pydantic: unknown keys are dropped), the OpenAI routes
into pydantic models whose fields are converted one by one into a ``GenerateReqInput``, sampling parameters
into the ``SamplingParams`` struct, and ``/set_internal_state`` accepts numeric values for an allow-list of
scheduler knobs. None of them has a Vortex field; Vortex reads its config from ``server_args`` only, which
the scheduler received when it started.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.sglang

ATTEMPT = {"module_path": "/tmp/evil_flow.py", "module_name": "evil", "topk_val": 1}
VORTEX_KEYS = {
    "vortex": ATTEMPT,
    "vortex_config": ATTEMPT,
    "_vortex_config": ATTEMPT,
    "enable_vortex_sparsity": True,
}


def test_generate_request_has_no_vortex_field(sgl: Any) -> None:
    from pydantic import TypeAdapter
    from sglang.srt.managers.io_struct import GenerateReqInput

    names = {f.name for f in dataclasses.fields(GenerateReqInput)}
    assert not [n for n in names if "vortex" in n.lower()]
    with pytest.raises(TypeError):
        GenerateReqInput(text="hi", vortex=ATTEMPT)  # type: ignore[call-arg]
    parsed = TypeAdapter(GenerateReqInput).validate_python(
        {"text": "hi", **VORTEX_KEYS}
    )  # FastAPI's body parsing
    assert not any(hasattr(parsed, key) for key in VORTEX_KEYS)


@pytest.mark.parametrize("model", ["CompletionRequest", "ChatCompletionRequest"])
def test_openai_requests_drop_vortex_keys(sgl: Any, model: str) -> None:
    from sglang.srt.entrypoints.openai import protocol

    cls = getattr(protocol, model)
    assert not [n for n in cls.model_fields if "vortex" in n.lower()]
    body: dict[str, Any] = {"model": "m", **VORTEX_KEYS}
    body.update(
        {"prompt": "hi"}
        if model == "CompletionRequest"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    request = cls.model_validate(body)
    assert not any(key in request.model_dump() for key in VORTEX_KEYS)


def test_sampling_params_have_no_vortex_field(sgl: Any) -> None:
    from sglang.srt.sampling.sampling_params import SamplingParams

    assert not [n for n in SamplingParams.__struct_fields__ if "vortex" in n.lower()]
    with pytest.raises(TypeError):
        SamplingParams(vortex=ATTEMPT)  # type: ignore[call-arg]


def test_internal_state_cannot_carry_a_config(sgl: Any) -> None:
    import msgspec
    from sglang.srt.managers.io_struct import SetInternalStateReq

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"server_args": {"_vortex_config": ATTEMPT}}, SetInternalStateReq)


def test_vortex_reads_its_config_from_server_args_only() -> None:
    """Every read of the config in vortex-sglang goes through the ``server_args`` object (plugin.config_of)."""
    src = Path(__file__).resolve().parents[1] / "src" / "vortex_torch" / "engine" / "sgl"
    readers = {}
    for path in sorted(src.glob("*.py")):
        hits = re.findall(r".*_vortex_config.*", path.read_text())
        if hits:
            readers[path.name] = hits
    assert set(readers) == {"plugin.py"}, readers
    # the backend gets its config from the factory hook, which reads model_runner.server_args
    backend_src = (src / "plugin.py").read_text()
    assert 'config_of(getattr(model_runner, "server_args", None))' in backend_src
