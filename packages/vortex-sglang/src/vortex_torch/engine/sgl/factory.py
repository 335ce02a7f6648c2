"""The backend factory the plugin's attention-backend hook calls: one Vortex class per base backend and
attention kind (GQA in :mod:`.backend`, MLA in :mod:`.mla_backend`). A module of its own so that neither
backend module imports the other's."""

from __future__ import annotations

from typing import Any

from .backend import VortexBackendMixin, VortexFlashInferBackend, VortexTritonBackend
from .config import VortexConfig
from .errors import VortexSGLangError
from .mla_backend import create_mla_backend


def create_backend(backend_str: str, model_runner: Any, config: VortexConfig) -> VortexBackendMixin:
    """The factory the plugin's backend hook calls for ``attention_backend`` "flashinfer" / "triton"."""
    if getattr(model_runner, "use_mla_backend", False):  # DeepSeek-V2/V3, GLM: one latent cache per token
        return create_mla_backend(backend_str, model_runner, config)
    if backend_str == "flashinfer":
        return VortexFlashInferBackend(
            model_runner,
            init_new_workspace=getattr(model_runner, "init_new_workspace", False),
            vortex_config=config,
        )
    if backend_str == "triton":
        if getattr(model_runner.model_config, "is_encoder_decoder", False):
            raise VortexSGLangError("encoder-decoder models are not supported by Vortex")
        return VortexTritonBackend(model_runner, vortex_config=config)
    raise VortexSGLangError(f"no Vortex backend for attention_backend={backend_str!r} (flashinfer, triton)")
