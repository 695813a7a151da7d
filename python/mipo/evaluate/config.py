"""The options of ``mipo eval``: :class:`EvalConfig`, its validation and its defaults; how
responses are generated is its own :class:`~mipo.generate.config.GenerationConfig`,
``generation`` (with the evaluation's defaults: :func:`eval_generation`).

>>> EvalConfig(model="m", data=["d.jsonl"]).generation.batch_size
16
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from mipo.errors import ConfigError
from mipo.generate.config import GenerationConfig
from mipo.prompt_format import DEFAULT_CONTEXT_FORMAT, PromptFormat

__all__ = ["EVAL_DTYPES", "EvalConfig", "eval_generation"]

EVAL_DTYPES = ("auto", "float32", "bfloat16")
"""The precisions evaluation generates and scores in."""


def eval_generation() -> GenerationConfig:
    """The evaluation's generation defaults: 256 new tokens (paper: 512; shorter than
    build-pairs' so evaluation stays quick) and 16 rows per forward pass, the rest as
    :class:`~mipo.generate.config.GenerationConfig` (temperature 0.1, top-p 0.9 as in the paper).

    >>> eval_generation().max_new_tokens
    256
    """
    return GenerationConfig(max_new_tokens=256, batch_size=16)


@dataclass
class EvalConfig:
    """Options of ``mipo eval``.

    >>> EvalConfig(model="m", data=["d.jsonl"], k=0)
    Traceback (most recent call last):
    mipo.errors.ConfigError: k must be an integer >= 1, got 0
    """

    CONFIG_DERIVED: ClassVar[dict[str, tuple[str, ...]]] = {
        "generation": ("seed", "trust_remote_code")
    }

    model: str
    """Model to evaluate: a folder, a ``mipo train`` output directory, a LoRA adapter, a name."""
    data: list[str]
    """Evaluation files, each ``[kind:]path`` with kind ``pmi``, ``choice`` or ``math``."""
    reference: str | None = None
    """Reference model for PMI. ``None``: the model ``model`` was trained from (its
    ``train_config.json``), else ``compare``, else ``model`` itself."""
    compare: str | None = None
    """Baseline model evaluated on the same prompts and seeds (typically the base model)."""
    judge: str | None = None
    """Judge model for the personalization win rate (needs ``compare``); ``None`` or ``"none"``
    skips it (the default: a judge must be asked for, and one too small to tell responses apart
    ties every pair)."""
    judge_url: str | None = None
    """An OpenAI-compatible API base (``http://host:port/v1``: ``vllm serve``, a hosted
    endpoint) whose ``judge_model`` rates every response against each stated preference of the
    user (:mod:`mipo.evaluate.judge_server`); the key comes from ``$MIPO_JUDGE_API_KEY`` (else
    ``$OPENAI_API_KEY``). Exclusive with ``judge``."""
    judge_model: str | None = None
    """The served judge model's name (with ``judge_url``)."""
    judge_concurrency: int = 8
    """Judge requests in flight at once (with ``judge_url``)."""
    judge_timeout_s: float = 60.0
    """Seconds a judge request may take before it is retried (with ``judge_url``)."""
    context_format: str = DEFAULT_CONTEXT_FORMAT
    """How a pmi file's user context enters its prompts and contrasts: ``user-turn``,
    ``about-user``, ``raw-system``, ``paper`` or a template holding ``{context}``
    (:mod:`mipo.prompt_format`); use the format the model was trained with."""
    k: int = 8
    """Contrast prompts per prompt (per contrast set) for the PMI's estimate of log π_ref(y)."""
    seed: int = 0
    """Seed of generation (per-row seeds derive from it), contrast draws and bootstrap."""
    math_max_new_tokens: int | None = None
    """Most tokens per generated math solution. ``None``: 1024 as in the paper when generating on
    a GPU (or with vLLM), 512 on CPU, where a rambling answer costs minutes."""
    math_shots: int = 8
    """Worked examples shown before each math question, as earlier user/assistant chat turns
    (paper: GSM8K 8-shot chain of thought); 0 asks zero-shot."""
    math_fewshot: str | None = None
    """File of worked examples (``question``, ``answer`` ending in ``#### N``) for the math
    prompts, the first ``math_shots`` used; ``None``: the 8 shipped with mipo."""
    limit: int | None = None
    """Evaluate at most this many rows of each file (quick runs)."""
    n_bootstrap: int = 2000
    """Bootstrap resamples for every confidence interval."""
    generation: GenerationConfig = field(default_factory=eval_generation)
    """How responses are generated (:func:`eval_generation`'s defaults); its ``batch_size``,
    ``device`` and ``dtype`` (``auto``, ``float32`` or ``bfloat16``) are the scoring's too, its
    ``max_new_tokens`` applies to PMI and judged prompts (math: ``math_max_new_tokens``), and its
    ``seed`` and ``trust_remote_code`` are this config's."""
    train_log: str | None = None
    """A ``train_log.jsonl`` to plot; ``None``: the evaluated model's own, if it has one."""
    overwrite: bool = False
    """Replace an existing report in the output directory."""
    trust_remote_code: bool = False
    """Allow models that ship their own Python code."""
    cache_dir: str | None = None
    """Folder of per-model results reused across evaluations (:mod:`mipo.evaluate.cache`): a
    model already evaluated on the same data with the same settings (weights, data and
    settings hashed) is read back instead of generated and scored again. ``None``: no cache."""

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, rule: str) -> ConfigError:
            return ConfigError(f"{name} must be {rule}, got {value!r}")

        if not self.model:
            raise bad("model", self.model, "a model folder or name")
        if not self.data:
            raise ConfigError("data: pass at least one evaluation file")
        for name in ("k", "n_bootstrap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, value, "an integer >= 1")
        limit = self.math_max_new_tokens
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise bad("math_max_new_tokens", limit, "an integer >= 1, or None")
        shots = self.math_shots
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise bad("math_shots", shots, "an integer >= 0")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 2):
            raise bad("limit", self.limit, "an integer >= 2, or None")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", self.seed, "an integer >= 0")
        PromptFormat(self.context_format)
        if not isinstance(self.generation, GenerationConfig):
            raise bad("generation", self.generation, "a GenerationConfig")
        if self.generation.dtype not in EVAL_DTYPES:
            raise bad("generation.dtype", self.generation.dtype, ", ".join(EVAL_DTYPES))
        # One seed and one trust setting for the whole evaluation: the generation takes these.
        self.generation = replace(
            self.generation, seed=self.seed, trust_remote_code=self.trust_remote_code
        )
        if self.judge is not None and self.judge.lower() == "none":
            self.judge = None
        if self.judge_url is not None:
            if self.judge is not None:
                raise ConfigError(
                    "--judge (a local model) and --judge-url (a server) exclude each other: "
                    "pass one of them"
                )
            self.server_judge()  # validates url, model, concurrency and timeout now
        elif self.judge_model is not None:
            raise ConfigError("--judge-model names the served model of --judge-url: pass both")

    def server_judge(self) -> Any:
        """The :class:`~mipo.evaluate.judge_server.ServerJudge` of ``judge_url``."""
        from mipo.evaluate.judge_server import ServerJudge

        return ServerJudge(
            str(self.judge_url),
            self.judge_model or "",
            concurrency=self.judge_concurrency,
            timeout_s=self.judge_timeout_s,
        )

    @property
    def judge_name(self) -> str | None:
        """How reports name the judge."""
        if self.judge_url:
            return f"{self.judge_model} at {self.judge_url}"
        return self.judge

    def device_for_scoring(self) -> str | None:
        return None if self.generation.device == "auto" else self.generation.device

    def math_token_limit(self) -> int:
        """``math_max_new_tokens``, or its device-dependent default (1024 on GPU, 512 on CPU)."""
        if self.math_max_new_tokens is not None:
            return self.math_max_new_tokens
        device, backend = self.generation.device, self.generation.backend
        if device.startswith("cuda"):
            return 1024
        if backend == "vllm":
            from mipo.generate import vllm_device

            return 1024 if vllm_device() == "cuda" else 512
        if device == "auto":
            import torch

            return 1024 if torch.cuda.is_available() else 512
        return 512
