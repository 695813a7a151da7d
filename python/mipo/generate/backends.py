"""Which backend a generation config gets on this machine: the one place that decides.

``hf`` is transformers (:mod:`mipo.generate.hf`); ``vllm`` is vLLM in this environment
(:mod:`mipo.generate.vllm`) or, when it cannot be imported here but ``vllm_python`` names an
interpreter that has it, vLLM in that environment
(:class:`~mipo.generate.executors.remote.RemoteVLLMBackend`); ``auto`` resolves as
:func:`~mipo.generate.config.resolve_backend_name` says.

Example:
    >>> from mipo.generate.config import GenerationConfig
    >>> runs_elsewhere(GenerationConfig(backend="hf"))
    False
    >>> # loads the model: see tests/test_generate.py
    >>> create_backend(model, GenerationConfig(backend="hf")).name  # doctest: +SKIP
    'hf'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mipo.generate.config import resolve_backend_name, vllm_available

if TYPE_CHECKING:
    from mipo.generate.backend import Backend
    from mipo.generate.config import GenerationConfig
    from mipo.models import ResolvedModel

__all__ = ["create_backend", "runs_elsewhere"]


def runs_elsewhere(config: GenerationConfig) -> bool:
    """Whether ``config`` resolves to vLLM that only another environment (``vllm_python``) has."""
    return (
        resolve_backend_name(config.backend, config.vllm_python) == "vllm" and not vllm_available()
    )


def create_backend(model: ResolvedModel, config: GenerationConfig) -> Backend:
    """Build the backend ``config.backend`` names for a :class:`~mipo.models.ResolvedModel`."""
    name = resolve_backend_name(config.backend, config.vllm_python)
    if name == "vllm":
        if not vllm_available():  # through another environment's interpreter
            from mipo.generate.executors.remote import RemoteVLLMBackend

            return RemoteVLLMBackend(model, config)
        from mipo.generate.vllm import VLLMBackend

        return VLLMBackend(model, config)
    from mipo.generate.hf import HFBackend

    return HFBackend(model, config)
