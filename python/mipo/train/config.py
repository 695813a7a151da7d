"""Options of ``mipo train``: :class:`TrainConfig` (every field documented, validated in
``__post_init__``; also read from YAML), the paper's learning rates, and the shipped ``accelerate``
configs for several GPUs.

>>> TrainConfig(lora=True).resolved_learning_rate(), TrainConfig(lora=True).resolved_epochs()
(0.0005, 2.0)
>>> accelerate_config_path("ddp").name
'ddp.yaml'
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from mipo.errors import ConfigError, DependencyError

__all__ = [
    "ACCELERATE_CONFIGS",
    "FULL_FT_EPOCHS",
    "FULL_FT_LEARNING_RATE",
    "LORA_EPOCHS",
    "LORA_LEARNING_RATE",
    "TrainConfig",
    "accelerate_config_path",
    "trl_loss_types",
]


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
# contrast; 5e-4 is the one rate that moved the same-question contrast, and only its 2-epoch run
# (context-swap negatives) raised it beyond what copying the context explains. Chosen on a 135M
# model: sweep --lr and --epochs on larger ones.
FULL_FT_LEARNING_RATE = 5e-7
LORA_LEARNING_RATE = 5e-4
FULL_FT_EPOCHS = 1.0
LORA_EPOCHS = 2.0

_REPORT_TO = ("none", "tensorboard")
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

    >>> # imports TRL (seconds)
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
    ``sigmoid`` on summed log-probabilities is the paper's loss; ``sigmoid,sft`` adds the
    negative log-likelihood of the chosen answer (the RPO recipe), which keeps the tuned model
    close to answers it already writes fluently."""
    loss_weights: str | None = None
    """Weights of the ``loss_type`` terms, comma-separated in the same order (``1,0.5`` with
    ``sigmoid,sft``: the NLL term at half weight). ``None``: 1 for each."""
    epochs: float | None = None
    """Passes over the pairs. ``None``: 1 for full fine-tuning (paper), 2 with LoRA."""
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
    precompute_ref_log_probs: bool = True
    """Score the reference once, before the first step, instead of at every step of every
    epoch: one reference forward per pair in all, the same numbers
    (``tests/test_train_memory.py``), and for full fine-tuning no second model in memory.
    ``False``: TRL's scoring at every step."""
    gradient_checkpointing: bool = True
    """Recompute each layer's activations in the backward pass instead of keeping them (TRL's
    default too), for one more forward pass per step. With the chunked head and the reference
    scored once, it took LoRA training of the demo's pairs on the CPU from 9.6 GB peak RSS to
    2.9 GB (``benches/bench_train_memory.py``, RESULTS.md *Training memory*)."""
    chunked_logprobs: bool = True
    """Compute the per-token log-probs of the response tokens only, a bounded chunk at a time
    (:mod:`mipo.train.logprobs`), where TRL's fused LM head would project every position in
    512 MiB fp32 tiles: every device but CUDA and XPU, where TRL's Triton kernel already scores
    only the response. ``False``: TRL's head everywhere (YAML config only)."""
    bf16: bool | None = None
    """bf16 mixed precision. ``None``: on where it is fast (a CUDA GPU that supports it, a CPU
    with AMX or AVX-512 BF16), else off."""
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
        if self.epochs is not None and not self.epochs > 0:
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
        weights = self.resolved_loss_weights()
        if weights is not None:
            if len(weights) != len(losses):
                raise ConfigError(
                    f"loss_weights has {len(weights)} value(s) for {len(losses)} loss type(s) "
                    f"({self.loss_type}); give one weight per loss type"
                )
            if any(not (w >= 0 and w < float("inf")) for w in weights) or not any(weights):
                raise bad("loss_weights", self.loss_weights, "finite numbers >= 0, not all 0")
        if not isinstance(self.chunked_logprobs, bool):
            raise bad("chunked_logprobs", self.chunked_logprobs, "true or false")
        if not isinstance(self.extra_dpo_args, dict):
            raise bad("extra_dpo_args", self.extra_dpo_args, "a mapping of DPOConfig fields")

    def resolved_loss_weights(self) -> list[float] | None:
        """``loss_weights`` as numbers, one per loss type; None when unset."""
        if self.loss_weights is None:
            return None
        parts = [p.strip() for p in str(self.loss_weights).split(",") if p.strip()]
        try:
            return [float(p) for p in parts]
        except ValueError:
            raise ConfigError(
                f"loss_weights must be comma-separated numbers, got {self.loss_weights!r}"
            ) from None

    def loss_types(self) -> list[str]:
        """``loss_type`` split on commas."""
        return [name.strip() for name in self.loss_type.split(",") if name.strip()]

    def resolved_epochs(self) -> float:
        """The number of passes over the pairs actually made (unless ``max_steps`` is set)."""
        if self.epochs is not None:
            return self.epochs
        return LORA_EPOCHS if self.lora else FULL_FT_EPOCHS

    def resolved_learning_rate(self) -> float:
        """The peak learning rate actually used."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora else FULL_FT_LEARNING_RATE

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Options from a YAML mapping (keys are field names; dashes allowed), then ``overrides``.

        >>> # needs a YAML file: see tests/test_train.py
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
