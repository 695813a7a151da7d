"""``mipo train``: DPO on MIPO pairs with TRL's ``DPOTrainer`` (full fine-tuning or PEFT LoRA).

The reference model is the model that generated the pairs: the method's claim (the DPO optimum is
beta·log(π/π_ref) = PMI(x, y) + c(x)) holds for pairs sampled from π_ref. So by default the model
to train is read from ``run.json`` beside ``pairs.parquet``; ``--model`` overrides it with a
warning when it differs.

Output directory layout::

    OUTDIR/model/            the trained model (full) or the LoRA adapter, with tokenizer + template
    OUTDIR/merged/           LoRA only, with --merge: base + adapter merged into a plain model
    OUTDIR/train_config.json every option, resolved values, versions, pairs provenance, status
    OUTDIR/train_log.jsonl   TRL's log history, one JSON object per logging step
    OUTDIR/checkpoints/      Trainer checkpoints (for --resume); removed after success unless kept
    OUTDIR/tensorboard/      with --report-to tensorboard

Multi-GPU / multi-node: ``accelerate launch --config_file CONFIG -m mipo train PAIRS -o OUTDIR``
with one of the shipped configs (``mipo train --print-accelerate-config ddp|zero2|zero3|fsdp`` prints
its path). Only the main process writes files other than what ``Trainer`` saves itself.

>>> from mipo.train import TrainConfig, train  # doctest: +SKIP
>>> result = train("out/pairs.parquet", "out/train", TrainConfig(lora=True))  # doctest: +SKIP
>>> result.model_dir  # doctest: +SKIP
PosixPath('out/train/model')
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from mipo.errors import (
    ConfigError,
    CorpusError,
    DependencyError,
    ModelError,
    OutputError,
)
from mipo.train_console import TrainConsole, quiet_third_party, remove_trainer_printers
from mipo.train_pairs import (
    REQUIRED_PAIR_COLUMNS,
    PairsSource,
    pairs_sha256,
    read_pairs,
    resolve_pairs,
)

__all__ = [
    "ACCELERATE_CONFIGS",
    "REQUIRED_PAIR_COLUMNS",
    "TrainConfig",
    "TrainResult",
    "accelerate_config_path",
    "read_pairs",
    "train",
    "trl_loss_types",
]

logger = logging.getLogger(__name__)


ACCELERATE_CONFIGS = {
    "ddp": "ddp.yaml",
    "zero2": "deepspeed_zero2.yaml",
    "zero3": "deepspeed_zero3.yaml",
    "fsdp": "fsdp.yaml",
}
"""Shipped ``accelerate`` configs, by short name (files in ``mipo/data/accelerate/``)."""

# Paper: lr 5e-7 for full fine-tuning. A LoRA delta starts at zero (B = 0) and its update is
# scaled by alpha/r, so the same step size barely moves it in one epoch. Measured on the built-in
# SmolLM2-135M (benches/RESULTS.md, mini reproduction): 5e-5 and 1e-4 move no held-out PMI
# contrast; 5e-4 is the one rate that moved the same-question contrast. Chosen on a 135M model:
# sweep --lr on larger ones.
FULL_FT_LEARNING_RATE = 5e-7
LORA_LEARNING_RATE = 5e-4

_REPORT_TO = ("none", "tensorboard")
# Options that may change between an interrupted run and its --resume.
_RESUME_FREE_OPTIONS = frozenset({"resume", "overwrite", "keep_checkpoints", "report_to"})
_SCHEDULERS = (
    "cosine_with_min_lr",
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
)
_DTYPES = ("float32", "bfloat16", "auto")
# Used only when the installed TRL's DPOConfig help text cannot be parsed (see trl_loss_types).
_FALLBACK_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


@functools.cache
def trl_loss_types() -> tuple[str, ...]:
    """The DPO loss types the installed TRL accepts, read from its ``DPOConfig`` documentation.

    >>> "sigmoid" in trl_loss_types()  # doctest: +SKIP
    True
    """
    try:
        from trl import DPOConfig
    except ImportError as e:
        raise DependencyError(
            f"training needs TRL ({e}); install it with: pip install 'mipo[hf]'"
        ) from e
    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata.get("help", "")
    head = help_text.split("Possible values are:", 1)[-1].split(". ", 1)[0]
    names = tuple(re.findall(r"'([a-z0-9_]+)'", head))
    return names or _FALLBACK_LOSS_TYPES


@dataclass
class TrainConfig:
    """Options of ``mipo train``. Defaults follow the paper (arXiv 2603.19294) unless noted.

    >>> TrainConfig(lora=True).resolved_learning_rate()
    0.0005
    >>> TrainConfig(beta=-1)
    Traceback (most recent call last):
    mipo.errors.ConfigError: beta must be > 0, got -1
    """

    model: str | None = None
    """Model to train; it is also the frozen reference. ``None``: the model that generated the
    pairs (``run.json`` beside them), else the built-in default. A different model is accepted
    with a warning (the method assumes the reference generated the pairs)."""
    beta: float = 0.1
    """DPO temperature: how far the policy may move from the reference (paper: 0.1)."""
    loss_type: str = "sigmoid"
    """TRL DPO loss; comma-separate several to sum them with equal weights (``sigmoid,sft``).
    ``sigmoid`` on summed log-probabilities is the paper's loss."""
    epochs: float = 1.0
    """Passes over the pairs (paper: 1)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (> 0 overrides ``epochs``; for smoke runs)."""
    learning_rate: float | None = None
    """Peak learning rate. ``None``: 5e-7 for full fine-tuning (paper), 5e-4 with LoRA."""
    lr_scheduler: str = "cosine_with_min_lr"
    """Learning-rate schedule after warmup (paper: cosine down to ``min_lr_ratio`` of the peak)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak, for ``cosine_with_min_lr`` (paper: 0.1)."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming up linearly from 0 (paper: 3%)."""
    adam_beta1: float = 0.9
    """Adam beta1 (paper: 0.9)."""
    adam_beta2: float = 0.95
    """Adam beta2 (paper: 0.95)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    batch_size: int = 4
    """Pairs per device per forward pass (paper: 4 in total)."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step (effective batch = batch_size x this x processes)."""
    max_length: int | None = 1024
    """Truncate prompt + response to this many tokens (keeps the start); pairs whose prompt alone
    fills it are dropped by TRL. ``None``: no truncation."""
    lora: bool = False
    """Train a PEFT LoRA adapter instead of all weights; the adapter-disabled model is the
    reference, so no second model copy is loaded."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters: ``all-linear`` (PEFT's every linear layer but the output head)
    or a comma-separated list of module names (``q_proj,v_proj``)."""
    merge: bool = False
    """With LoRA, also save ``OUTDIR/merged``: the base model with the adapter merged in."""
    precompute_ref_log_probs: bool = False
    """Score the reference once before training instead of at every step (saves memory and
    compute for full fine-tuning: the reference is not kept in memory)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 20-30% slower."""
    bf16: bool | None = None
    """bf16 mixed precision. ``None``: on where it is fast (a CUDA GPU that supports it, a CPU
    with AMX), else off."""
    model_dtype: str = "float32"
    """Dtype the weights are loaded in: ``float32`` (mixed precision keeps fp32 master weights),
    ``bfloat16`` (halves memory; pure bf16 training), or ``auto`` (the checkpoint's dtype)."""
    report_to: str = "none"
    """Where to log besides ``train_log.jsonl``: ``none`` or ``tensorboard``."""
    logging_steps: int = 1
    """Optimizer steps between log entries."""
    save_steps: int = 500
    """Optimizer steps between checkpoints (for ``--resume``)."""
    save_total_limit: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    keep_checkpoints: bool = False
    """Keep ``OUTDIR/checkpoints`` after a successful run (they hold optimizer state: large)."""
    seed: int = 0
    """Seed for data order, dropout and LoRA initialisation."""
    resume: bool = False
    """Continue from the last checkpoint in ``OUTDIR/checkpoints`` (same options required)."""
    overwrite: bool = False
    """Replace a finished or partial run in OUTDIR."""
    allow_foreign_pairs: bool = False
    """Train even if the pairs were generated by a model with a different tokenizer (normally an
    error: such pairs were almost surely built for another model)."""
    trust_remote_code: bool = False
    """Allow models that ship their own Python code."""
    extra_dpo_args: dict[str, Any] = field(default_factory=dict)
    """Further ``trl.DPOConfig`` fields, passed as they are (YAML config only; validated by TRL)."""

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, rule: str) -> ConfigError:
            return ConfigError(f"{name} must be {rule}, got {value!r}")

        if not self.beta > 0:
            raise bad("beta", self.beta, "> 0")
        if not self.epochs > 0:
            raise bad("epochs", self.epochs, "> 0")
        if self.max_steps == 0 or self.max_steps < -1:
            raise bad("max_steps", self.max_steps, "> 0, or -1 to train for `epochs`")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise bad("learning_rate", self.learning_rate, "> 0")
        if self.lr_scheduler not in _SCHEDULERS:
            raise bad("lr_scheduler", self.lr_scheduler, f"one of {', '.join(_SCHEDULERS)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", self.warmup_ratio, "in [0, 1)")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise bad(name, value, "in [0, 1)")
        if self.weight_decay < 0:
            raise bad("weight_decay", self.weight_decay, ">= 0")
        if not self.max_grad_norm > 0:
            raise bad("max_grad_norm", self.max_grad_norm, "> 0")
        for name in (
            "batch_size",
            "gradient_accumulation_steps",
            "lora_r",
            "lora_alpha",
            "logging_steps",
            "save_steps",
            "save_total_limit",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, value, "an integer >= 1")
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise bad("max_length", self.max_length, "an integer >= 2, or None")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", self.lora_dropout, "in [0, 1)")
        if not self.lora_target_modules.strip():
            raise bad("lora_target_modules", self.lora_target_modules, "'all-linear' or names")
        if self.merge and not self.lora:
            raise ConfigError("merge applies to LoRA only: add --lora, or drop --merge")
        if self.model_dtype not in _DTYPES:
            raise bad("model_dtype", self.model_dtype, f"one of {', '.join(_DTYPES)}")
        if self.report_to not in _REPORT_TO:
            raise bad("report_to", self.report_to, f"one of {', '.join(_REPORT_TO)}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite contradict each other: pass one of them")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", self.seed, "an integer >= 0")
        losses = self.loss_types()
        if not losses:
            raise bad("loss_type", self.loss_type, "a TRL DPO loss name")
        if losses != ["sigmoid"]:  # the default needs no TRL import (keeps `mipo --help` fast)
            accepted = trl_loss_types()
            unknown = [name for name in losses if name not in accepted]
            if unknown:
                raise ConfigError(
                    f"loss_type {', '.join(unknown)!s} is not a TRL DPO loss; "
                    f"accepted: {', '.join(accepted)}"
                )
        if not isinstance(self.extra_dpo_args, dict):
            raise bad("extra_dpo_args", self.extra_dpo_args, "a mapping of DPOConfig fields")

    def loss_types(self) -> list[str]:
        """``loss_type`` split on commas."""
        return [name.strip() for name in self.loss_type.split(",") if name.strip()]

    def resolved_learning_rate(self) -> float:
        """The peak learning rate actually used."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora else FULL_FT_LEARNING_RATE

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Options from a YAML mapping (keys are field names; dashes allowed), then ``overrides``.

        >>> TrainConfig.from_yaml("train.yaml", beta=0.2)  # doctest: +SKIP
        """
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"config file {path} has unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        data.update(overrides)
        return cls(**data)


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced."""

    output_dir: Path
    model_dir: Path
    merged_dir: Path | None
    log_path: Path
    config_path: Path
    num_pairs: int
    global_steps: int
    train_runtime_s: float
    metrics: dict[str, Any]


# --- pairs ------------------------------------------------------------------------------------


def _read_run_info(source: PairsSource) -> dict[str, Any] | None:
    run_json = source.folder / "run.json"
    if not run_json.is_file():
        return None
    try:
        info = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorpusError(f"{run_json} is not valid JSON ({e}); restore or delete it") from e
    return info if isinstance(info, dict) else None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of a tokenizer's vocabulary, special tokens and chat template (16 hex digits)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.all_special_tokens).encode())
    digest.update((tokenizer.chat_template or "").encode())
    return digest.hexdigest()[:16]


def _generator_folder(generator: dict[str, Any]) -> Path | None:
    """The generating model's local folder, when run.json lets us find it without a download."""
    if generator.get("path") and Path(generator["path"]).is_dir():
        return Path(generator["path"])
    name = generator.get("name")
    if not name:
        return None
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    from mipo.models import DEFAULT_MODEL, resolve_model

    if name == DEFAULT_MODEL:  # local (a cached conversion of the wheel's GGUF), no download
        return Path(resolve_model(DEFAULT_MODEL).path)
    return None


def _check_generator(
    run_info: dict[str, Any] | None,
    model_path: Path,
    tokenizer: Any,
    config: TrainConfig,
) -> dict[str, Any]:
    """Compare the model to train with the one that generated the pairs; warn or refuse.

    The same folder, or the same fingerprint (``tokenizer.json`` + ``config.json``): fine.
    Same tokenizer, another model (e.g. a fine-tuned variant): a warning, since the reference
    then did not generate the pairs. Different tokenizer: an error unless
    ``allow_foreign_pairs``: the pairs were almost surely built for another model family (a wrong
    directory, a wrong flag). When the generator cannot be found locally (a hub id), only the
    fingerprints are compared, with a warning if they differ.
    """
    from mipo.models import model_fingerprint

    if run_info is None:
        warnings.warn(
            "no run.json beside the pairs: cannot check that the model to train generated them "
            "(MIPO assumes the reference model is the generator)",
            UserWarning,
            stacklevel=4,
        )
        return {"checked": False}
    generator = run_info.get("model") or {}
    label = generator.get("name") or generator.get("path") or "an unrecorded model"
    gen_path = _generator_folder(generator)
    fingerprint = generator.get("fingerprint")
    same = (gen_path is not None and gen_path.resolve() == model_path.resolve()) or bool(
        fingerprint and fingerprint == model_fingerprint(model_path)
    )
    report: dict[str, Any] = {"checked": True, "generator": generator, "same_model": same}
    if same:
        report["tokenizer_match"] = True
        return report
    warnings.warn(
        f"training {model_path} but the pairs were generated by {label}: MIPO assumes the "
        "reference (the model trained) generated the pairs",
        UserWarning,
        stacklevel=4,
    )
    theirs = None
    if gen_path is not None:
        from transformers import AutoTokenizer

        try:
            theirs = tokenizer_fingerprint(
                AutoTokenizer.from_pretrained(gen_path, trust_remote_code=config.trust_remote_code)
            )
        except (OSError, ValueError):
            theirs = None
    ours = tokenizer_fingerprint(tokenizer)
    report["tokenizer_match"] = None if theirs is None else theirs == ours
    if theirs is None:
        warnings.warn(
            f"cannot find the generating model {label} locally to compare tokenizers",
            UserWarning,
            stacklevel=4,
        )
    elif theirs != ours:
        message = (
            f"the pairs were generated by {label}, whose tokenizer differs from {model_path}'s"
        )
        if not config.allow_foreign_pairs:
            raise ConfigError(
                f"{message}: train the model that generated them (omit --model), rebuild the "
                "pairs with this model, or pass --allow-foreign-pairs"
            )
        warnings.warn(
            f"{message}; training anyway (--allow-foreign-pairs)", UserWarning, stacklevel=4
        )
    return report


# --- output directory -------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _prepare_output_dir(outdir: Path, config: TrainConfig) -> None:
    checkpoints = outdir / "checkpoints"
    finished = (outdir / "train_config.json").is_file()
    partial = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if config.overwrite:
        for name in ("model", "merged", "checkpoints", "tensorboard"):
            shutil.rmtree(outdir / name, ignore_errors=True)
        for name in ("train_config.json", "train_log.jsonl"):
            (outdir / name).unlink(missing_ok=True)
        return
    if finished and not config.resume:
        raise OutputError(
            f"{outdir} already holds a trained model: pass --overwrite to replace it, "
            "or choose another -o"
        )
    if partial and not config.resume:
        raise OutputError(
            f"{outdir} holds checkpoints of an unfinished run: pass --resume to continue it "
            "or --overwrite to start over"
        )
    if finished and config.resume:
        raise OutputError(f"{outdir} holds a finished run: nothing to resume (use --overwrite)")


def accelerate_config_path(name: str) -> Path:
    """Path of a shipped ``accelerate`` config: ``ddp``, ``zero2``, ``zero3`` or ``fsdp``.

    >>> accelerate_config_path("ddp").name
    'ddp.yaml'
    """
    if name not in ACCELERATE_CONFIGS:
        raise ConfigError(
            f"unknown accelerate config {name!r}; shipped: {', '.join(ACCELERATE_CONFIGS)}"
        )
    return Path(str(resources.files("mipo") / "data" / "accelerate" / ACCELERATE_CONFIGS[name]))


# --- training ---------------------------------------------------------------------------------


def _resolve_model(config: TrainConfig, run_info: dict[str, Any] | None) -> Path:
    from mipo.models import resolve_model

    spec = config.model
    if spec is None and run_info is not None:
        generator = run_info.get("model") or {}
        gen_path = generator.get("path")
        spec = gen_path if gen_path and Path(gen_path).is_dir() else generator.get("name")
    if spec is None:
        from mipo.models import DEFAULT_MODEL

        spec = DEFAULT_MODEL
    path = Path(str(spec)).expanduser()
    if path.is_dir() and (path / "adapter_config.json").exists():
        raise ModelError(
            f"{path} is a LoRA adapter: train from a full model (merge it first with "
            "`mipo train --lora --merge`, and pass OUTDIR/merged)"
        )
    if path.is_dir() and not (path / "config.json").exists() and (path / "merged").is_dir():
        path = path / "merged"  # a previous LoRA run's merged model (iterated rounds)
    elif path.is_dir() and not (path / "config.json").exists() and (path / "model").is_dir():
        path = path / "model"
    return resolve_model(
        str(path) if path.exists() else str(spec), trust_remote_code=config.trust_remote_code
    ).path


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _bf16(config: TrainConfig) -> bool:
    """bf16 mixed precision (autocast; the trained weights stay fp32): on by default where it
    is fast — a CUDA GPU that supports it, or a CPU with AMX (2-3x faster steps there)."""
    import torch

    from mipo.models import bf16_is_fast

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if config.bf16 is not None:
        if config.bf16 and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU does not support bf16; drop --bf16 to train in fp32")
        return config.bf16
    return bf16_is_fast(device)


def _dpo_args(config: TrainConfig, outdir: Path) -> Any:
    from trl import DPOConfig

    kwargs: dict[str, Any] = {
        "output_dir": str(outdir / "checkpoints"),
        "beta": config.beta,
        "loss_type": config.loss_types(),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.resolved_learning_rate(),
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_ratio,  # < 1: a ratio of the total steps (transformers 5)
        "adam_beta1": config.adam_beta1,
        "adam_beta2": config.adam_beta2,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "precompute_ref_log_probs": config.precompute_ref_log_probs,
        _checkpointing_option(DPOConfig): config.gradient_checkpointing,
        "bf16": _bf16(config),
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "report_to": "none",  # TensorBoard is attached as a callback writing to OUTDIR/tensorboard
        "model_init_kwargs": {"dtype": config.model_dtype},
        "trust_remote_code": config.trust_remote_code,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": _cuda_available(),
        # Every parameter (LoRA or full) takes part in each step; the DDP search for unused
        # ones is a wasted autograd traversal.
        "ddp_find_unused_parameters": False,
    }
    if config.lr_scheduler == "cosine_with_min_lr":
        kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": config.min_lr_ratio}
    if kwargs["bf16"] and not _cuda_available():
        kwargs["use_cpu"] = True  # transformers: bf16 autocast on the CPU must be asked for
    kwargs.update(config.extra_dpo_args)
    try:
        return DPOConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"TRL rejected the training options: {e}") from e


def _checkpointing_option(dpo_config: type) -> str:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old
    name still works, with a FutureWarning); use whichever this version has."""
    new = "activation_checkpointing"
    return (
        new if new in getattr(dpo_config, "__dataclass_fields__", {}) else "gradient_checkpointing"
    )


def _lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = config.lora_target_modules.strip()
    if targets != "all-linear":
        targets = [t.strip() for t in str(targets).split(",") if t.strip()]
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def _jsonl_log_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):  # type: ignore[misc]
        """Append each log entry to train_log.jsonl as it happens (a crash keeps the log)."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return JsonlLog()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("mipo", "torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _last_checkpoint(outdir: Path) -> Path | None:
    found = []
    for p in (outdir / "checkpoints").glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return max(found)[1] if found else None


def train(
    pairs: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    progress: bool | None = None,
    verbose: bool = False,
) -> TrainResult:
    """Run DPO on ``pairs``, writing into ``output_dir``.

    ``pairs``: a ``pairs.parquet``, a ``.jsonl`` file, a folder holding either, or a folder
    saved with ``datasets``' ``save_to_disk`` (see :mod:`mipo.train_pairs`).
    ``progress``: show the rich progress display on stderr; ``None`` (the default): only when
    stderr is a terminal. ``verbose``: keep transformers', datasets' and TRL's own progress bars
    and printed log dicts (off by default; the full log is in ``train_log.jsonl`` either way).
    Neither changes what is trained, so neither is a :class:`TrainConfig` field.

    >>> result = train("out/pairs.parquet", "out/train", TrainConfig(lora=True, max_steps=10))  # doctest: +SKIP
    """
    config = config or TrainConfig()
    source = resolve_pairs(pairs)
    outdir = Path(output_dir)
    df = read_pairs(source)
    run_info = _read_run_info(source)

    try:
        import torch  # noqa: F401
        from datasets import Dataset  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401
        from trl import DPOTrainer  # noqa: F401
    except ImportError as e:
        raise DependencyError(
            f"training needs the model stack ({e}); pip install 'mipo[hf]'"
        ) from e
    if config.report_to == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as e:
            raise DependencyError(
                "--report-to tensorboard needs tensorboard: pip install tensorboard"
            ) from e
    if progress is None:
        progress = sys.stderr.isatty()
    with quiet_third_party(verbose):
        return _train(source, df, run_info, outdir, config, progress=progress, verbose=verbose)


def _train(
    source: PairsSource,
    df: Any,
    run_info: dict[str, Any] | None,
    outdir: Path,
    config: TrainConfig,
    *,
    progress: bool,
    verbose: bool,
) -> TrainResult:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    model_path = _resolve_model(config, run_info)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.chat_template is None:
        raise ModelError(f"{model_path} has no chat template; MIPO trains instruct (chat) models")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    generator_check = _check_generator(run_info, model_path, tokenizer, config)

    # Distributed runs: every process builds the trainer; only the main one touches OUTDIR's
    # own files. DPOConfig creation initialises the distributed state.
    args = _dpo_args(config, outdir)
    is_main = args.process_index == 0
    if is_main:
        outdir.mkdir(parents=True, exist_ok=True)
        _prepare_output_dir(outdir, config)
        if not config.resume:
            (outdir / "train_log.jsonl").unlink(missing_ok=True)
    checkpoint = _last_checkpoint(outdir) if config.resume else None
    if config.resume and checkpoint is None:
        warnings.warn(
            f"--resume: no checkpoint in {outdir / 'checkpoints'}, starting from the beginning",
            UserWarning,
            stacklevel=3,
        )
    options_file = outdir / "checkpoints" / "mipo_train_options.json"
    pairs_sha = pairs_sha256(source)
    if config.resume and checkpoint is not None and options_file.is_file():
        saved = json.loads(options_file.read_text(encoding="utf-8"))
        now = json.loads(json.dumps(asdict(config), default=str))
        changed = [
            k for k in now if k not in _RESUME_FREE_OPTIONS and saved["options"].get(k) != now[k]
        ]
        if saved.get("pairs_sha256") != pairs_sha:
            changed.append("pairs file contents")
        if changed:
            raise ConfigError(
                f"--resume with different options ({', '.join(changed)}) than the interrupted "
                "run: rerun with the same options, or --overwrite to start over"
            )

    console = TrainConsole(enabled=progress and is_main, stages=not verbose)
    with console:
        console.stage(
            "loading",
            "model and pairs"
            + (", reference log-probs" if config.precompute_ref_log_probs else ""),
        )
        dataset = Dataset.from_polars(df)
        callbacks = [_jsonl_log_callback(outdir / "train_log.jsonl"), console.callback()]
        if config.report_to == "tensorboard" and is_main:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            callbacks.append(TensorBoardCallback(SummaryWriter(str(outdir / "tensorboard"))))

        provenance = {
            "pairs": str(source.path.resolve()),
            "pairs_format": source.format,
            "pairs_sha256": pairs_sha,
            "num_pairs": df.height,
            "generator_check": generator_check,
        }
        if is_main:
            options_file.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(
                options_file,
                json.dumps({"options": asdict(config), **provenance}, indent=2, default=str),
            )
        trainer = DPOTrainer(
            model=str(model_path),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=_lora_config(config) if config.lora else None,
            callbacks=callbacks,
        )
        if not verbose:
            remove_trainer_printers(trainer)  # the {'loss': ...} dicts; train_log.jsonl has them
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        runtime = time.perf_counter() - started
        console.stage(
            "saving", "model" + (", merged model" if config.lora and config.merge else "")
        )

        model_dir = outdir / "model"
        tmp_model = outdir / ".model.tmp"
        if is_main:
            shutil.rmtree(tmp_model, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp_model))  # every rank: ZeRO-3 / FSDP gather the weights here
        trainer.accelerator.wait_for_everyone()
        merged_dir: Path | None = None
        if is_main:
            tokenizer.save_pretrained(tmp_model)  # chat template included
            # Trainer pickles its arguments here; train_config.json records them as JSON instead,
            # and a pickle in a model folder is something mipo.models refuses to load by default.
            (tmp_model / "training_args.bin").unlink(missing_ok=True)
            shutil.rmtree(model_dir, ignore_errors=True)
            os.replace(tmp_model, model_dir)
            if config.lora:
                _fix_adapter_base(model_dir, model_path)
            if config.lora and config.merge:
                merged_dir = _save_merged(model_dir, outdir / "merged", config)
            history = trainer.state.log_history
            _atomic_write_text(
                outdir / "train_log.jsonl",
                "".join(json.dumps(entry) + "\n" for entry in history),
            )
            record = {
                "status": "complete",
                "options": asdict(config),
                "resolved": {
                    "model": str(model_path),
                    "reference_model": str(model_path),
                    "learning_rate": config.resolved_learning_rate(),
                    "bf16": args.bf16,
                    "world_size": args.world_size,
                    "effective_batch_size": config.batch_size
                    * config.gradient_accumulation_steps
                    * args.world_size,
                    "global_steps": trainer.state.global_step,
                },
                **provenance,
                "metrics": output.metrics,
                "train_runtime_s": runtime,
                "versions": _versions(),
            }
            _atomic_write_text(
                outdir / "train_config.json", json.dumps(record, indent=2, default=str)
            )
            if not config.keep_checkpoints:
                shutil.rmtree(outdir / "checkpoints", ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        return TrainResult(
            output_dir=outdir,
            model_dir=model_dir,
            merged_dir=merged_dir,
            log_path=outdir / "train_log.jsonl",
            config_path=outdir / "train_config.json",
            num_pairs=df.height,
            global_steps=trainer.state.global_step,
            train_runtime_s=runtime,
            metrics=dict(output.metrics),
        )


def _fix_adapter_base(adapter_dir: Path, base_path: Path) -> None:
    """Record the base model's absolute path in adapter_config.json so the adapter loads alone."""
    cfg_path = adapter_dir / "adapter_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(Path(base_path).resolve())
        _atomic_write_text(cfg_path, json.dumps(cfg, indent=2))


def _save_merged(adapter_dir: Path, merged_dir: Path, config: TrainConfig) -> Path:
    """Base + adapter merged into a plain model, reloaded from disk on the CPU (works the same
    whatever distributed engine trained it)."""
    from mipo.models import merge_adapter

    shutil.rmtree(merged_dir, ignore_errors=True)  # a new training replaces an older merge
    return merge_adapter(adapter_dir, merged_dir, trust_remote_code=config.trust_remote_code)
