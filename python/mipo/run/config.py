"""The options of ``mipo run``: :class:`RunConfig`, nesting the configs of its stages —
``generation`` (the pairs' :class:`~mipo.generate.config.GenerationConfig`), ``train``
(:class:`~mipo.train.TrainConfig`) and ``eval_generation`` (the evaluation's generation, with
:func:`~mipo.evaluate.config.eval_generation`'s defaults) — and the ``--demo`` settings.

>>> RunConfig("corpus.jsonl", "out").eval_generation.max_new_tokens
256
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mipo.configfile import from_mapping, merge_mappings, to_mapping
from mipo.corpus import ColumnOptions
from mipo.errors import ConfigError
from mipo.evaluate.config import EvalConfig, eval_generation
from mipo.generate.config import GenerationConfig, comparable_options
from mipo.run.recipes import load_recipe
from mipo.train.config import TrainConfig

__all__ = [
    "AUTO_NEGATIVES",
    "DEMO_SETTINGS",
    "DEMO_TRAIN",
    "FREE_OPTIONS",
    "RunConfig",
    "demo_config",
]

AUTO_NEGATIVES = "auto"
"""``RunConfig.negatives`` default: chosen from the corpus by
:func:`~mipo.run.pipeline.resolve_negatives`."""

FREE_OPTIONS = frozenset(
    {"out_dir", "rounds", "overwrite", "progress", "reuse_pairs", "eval_cache"}
)
"""Options that may change between a run and its continuation. (``reuse_pairs`` only saves work:
build-pairs checks that the copied pairs are the ones this run would build, so the outputs do not
depend on it.)"""

DEMO_SETTINGS: dict[str, Any] = {
    k: v for k, v in load_recipe("demo").config.items() if k != "corpus"
}
"""What ``--demo`` sets (explicit options win), in :class:`RunConfig`'s schema: the ``demo``
recipe (``python/mipo/recipes/demo.yaml``, which says why each value), less its corpus. Sized for
2 CPU cores with the built-in SmolLM2-135M (17.8 minutes measured on an AMD EPYC Zen 4 in bf16,
where the target is 10; 7.7 measured earlier where the CPU has AMX). Negatives are the same question with
another user's context (``context-swap``: what isolates personalization); held-out prompts are
whole users, and the summary's headline is their same-question PMI gain. Pairs whose chosen
answer speaks as the user are dropped (``drop_persona``): in the sweep (benches/RESULTS.md, *Mini
reproduction: prompt formats*) that kept persona adoption at the base model's level (-0.02
[-0.20, 0.17]) while the same-question gain held (+23.9 [13.7, 32.9] nats), but fluency still
fell (-0.39 nats/token), so the demo misses that criterion, and its summary says so (its own
measured run, README: +12.2 [6.3, 18.9] nats, adjusted +9.5 [-1.8, 17.1], persona 0.016 ->
0.078, fluency -0.47: it misses three)."""

DEMO_TRAIN: dict[str, Any] = DEMO_SETTINGS["train"]
"""The training options ``--demo`` sets (explicit options win)."""


@dataclass
class RunConfig:
    """Options of ``mipo run`` (see ``mipo run --help``).

    >>> RunConfig("corpus.jsonl", "out", eval_fraction=1.5)
    Traceback (most recent call last):
    mipo.errors.ConfigError: eval_fraction (--eval-fraction) must be in (0, 1), got 1.5
    """

    CONFIG_DERIVED: ClassVar[dict[str, tuple[str, ...]]] = {
        "generation": ("seed", "trust_remote_code"),
        "eval_generation": ("seed", "trust_remote_code"),
    }

    corpus: str
    """Prompt corpus (Parquet, JSONL or CSV file, folder or glob), as ``mipo build-pairs`` reads."""
    out_dir: str | Path
    """Output folder (created; a rerun with the same options continues in it)."""
    rounds: int = 1
    """Rounds of build-pairs -> train -> eval; round r generates with and trains from round r-1's
    model (iterated self-improvement; the paper runs one round)."""
    eval_fraction: float = 0.2
    """Share of the prompts held out for evaluation: whole users when the corpus has a user
    column, else rows; drawn with ``seed``. Ignored with ``eval_data``."""
    eval_data: str | None = None
    """A separate file of held-out prompts; the whole corpus is then used for training."""
    max_prompts: int | None = None
    """Train on at most this many prompts (a seeded sample of the training side); None: all."""
    max_eval_prompts: int | None = None
    """Evaluate on at most this many held-out prompts (a seeded sample); None: all."""
    model: str | None = None
    """Base model (hub id, folder, .gguf); None: the built-in default (SmolLM2-135M-Instruct)."""
    seed: int = 0
    """Seed of the split, the negatives (plus the round number), generation and evaluation."""
    columns: ColumnOptions = field(default_factory=ColumnOptions)
    """Corpus column names; None fields are detected."""
    negatives: str = AUTO_NEGATIVES
    """Negative strategies of build-pairs: ``random``, ``context-drop``, ``context-swap``,
    ``sentence-drop`` (one non-final sentence of the question removed: the paper's negative for
    math) or a comma-separated list of them. ``auto``: ``context-swap`` when the corpus has user contexts
    (a context column, or system messages, that is not blank everywhere), else ``random``.
    Measured on the built-in model (benches/RESULTS.md, mini reproduction), random negatives
    never raised the same-question PMI (personalization); context-swap did."""
    independent_negatives: bool = False
    """Sample a separate response for each random negative instead of reusing one."""
    keep_truncated: bool = False
    """Keep pairs whose responses hit ``generation.max_new_tokens`` (needed with short limits)."""
    drop_persona: bool = False
    """Drop pairs whose chosen answer speaks as the user (``mipo build-pairs --drop-persona``)."""
    dedup: bool = True
    """Remove exact and near-duplicate training prompts before pairing."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """How the pairs' responses are generated (``mipo build-pairs``'s ``generation``); its
    ``seed`` is ``seed`` plus the round number minus 1, its ``trust_remote_code`` this config's."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training options; ``model``, ``resume`` and ``overwrite`` are set by the run itself."""
    eval_generation: GenerationConfig = field(default_factory=eval_generation)
    """How the evaluation's responses are generated (``mipo eval``'s ``generation``, with its
    defaults: 256 new tokens, 16 rows per forward pass, also the scoring's); its ``seed`` and
    ``trust_remote_code`` are this config's."""
    eval_k: int = EvalConfig.k
    """Contrast prompts per held-out prompt (per contrast set) for the PMI's estimate of
    log π_ref(y)."""
    judge: str | None = None
    """Judge model for the personalization win rate: a model spec, ``auto`` (the base model),
    or None / ``none`` (the default) to skip it."""
    extra_eval_data: tuple[str, ...] = ()
    """Further ``mipo eval`` files evaluated every round (``choice:``/``math:`` files)."""
    math_max_new_tokens: int = 256
    """Most tokens per generated solution of a math file in ``extra_eval_data`` (shorter than
    ``mipo eval``'s device-dependent default, to keep every round quick)."""
    n_bootstrap: int = EvalConfig.n_bootstrap
    """Bootstrap resamples of every confidence interval."""
    overwrite: bool = False
    """Discard the outputs of a run with other options in ``out_dir`` and start over."""
    progress: bool = True
    """Show progress bars of the stages (stderr)."""
    trust_remote_code: bool = False
    """Allow models that ship their own Python code."""
    reuse_pairs: str | None = None
    """The ``round-1/pairs`` folder of a finished run with the same corpus, split, base model and
    generation options: copied instead of generated (build-pairs then checks that they are the
    pairs this run would build, else the run stops), so a sweep over training options generates
    once."""
    eval_cache: str | None = None
    """Folder of per-model evaluation results shared across runs (a sweep scores its base model
    once); None: ``OUTDIR/.eval-cache`` (shared by the rounds of this run). Results do not
    depend on it."""

    def __post_init__(self) -> None:
        from mipo.pairs.negatives import parse_strategy

        def bad(name: str, value: Any, rule: str) -> ConfigError:
            flag = "--" + name.replace("_", "-")
            return ConfigError(f"{name} ({flag}) must be {rule}, got {value!r}")

        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise bad("rounds", self.rounds, "an integer >= 1")
        if not (isinstance(self.eval_fraction, int | float) and 0 < self.eval_fraction < 1):
            raise bad("eval_fraction", self.eval_fraction, "in (0, 1)")
        for name in ("max_prompts", "max_eval_prompts"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise bad(name, value, "an integer >= 2, or unset")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", self.seed, "an integer >= 0")
        if self.negatives != AUTO_NEGATIVES:
            self.negatives = parse_strategy(self.negatives)
        for name in ("eval_k", "n_bootstrap", "math_max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, value, "an integer >= 1")
        if self.judge is not None and self.judge.strip().lower() == "none":
            self.judge = None
        if self.train.model is not None:
            raise ConfigError(
                "train.model is set by the run (round 1 trains the base model, round r the "
                "model of round r-1): pass the base model as --model / RunConfig.model"
            )
        if self.train.resume or self.train.overwrite:
            raise ConfigError(
                "train.resume/overwrite are managed by the run (a rerun resumes): drop them"
            )
        self.extra_eval_data = tuple(self.extra_eval_data)
        if (
            self.reuse_pairs is not None
            and not (Path(self.reuse_pairs) / "pairs.parquet").is_file()
        ):
            raise ConfigError(
                f"reuse_pairs must be the pairs folder of a finished run (with pairs.parquet), "
                f"got {self.reuse_pairs!r}"
            )
        # Fails now, naming the option, rather than after the split and the first round.
        validate = "random" if self.negatives == AUTO_NEGATIVES else None
        self.build_config("corpus", "out", None, round_number=1, negatives=validate)
        self.eval_config("model", ["data"], None)

    def build_config(
        self,
        input_path: str,
        out_dir: str | Path,
        model: str | None,
        *,
        round_number: int,
        negatives: str | None = None,
    ) -> Any:
        """The :class:`~mipo.pairs.config.BuildPairsConfig` of round ``round_number``."""
        from mipo.pairs.config import BuildPairsConfig

        negatives = negatives or self.negatives
        if negatives == AUTO_NEGATIVES:
            raise RuntimeError("negatives 'auto' must be resolved (resolve_negatives) first")
        return BuildPairsConfig(
            input=input_path,
            out_dir=out_dir,
            model=model,
            negatives=negatives,
            independent_negatives=self.independent_negatives,
            seed=self.seed + round_number - 1,  # fresh negatives and samples each round
            generation=self.generation,
            keep_truncated=self.keep_truncated,
            drop_persona=self.drop_persona,
            dedup=self.dedup,
            trust_remote_code=self.trust_remote_code,
            progress=self.progress,
        )

    def eval_config(self, model: str, data: list[str], base: str | None, **more: Any) -> EvalConfig:
        """The :class:`~mipo.evaluate.config.EvalConfig` of a round: ``model`` against ``base``
        (also the PMI's reference) on ``data``; ``more``: further EvalConfig fields."""
        judge = base if self.judge == "auto" else self.judge
        return EvalConfig(
            model=model,
            data=data,
            reference=base,
            compare=base,
            judge=judge,
            k=self.eval_k,
            seed=self.seed,
            context_format=self.columns.context_format,
            math_max_new_tokens=self.math_max_new_tokens,
            n_bootstrap=self.n_bootstrap,
            generation=self.eval_generation,
            trust_remote_code=self.trust_remote_code,
            **more,
        )

    def options_record(self) -> dict[str, Any]:
        """The options the outputs depend on, as JSON-ready values (for ``run.json``): the config
        without :data:`FREE_OPTIONS`, and without the generation settings that cannot change the
        text (:func:`~mipo.generate.config.comparable_options`: memory, caching, where vLLM runs)."""
        record = json.loads(json.dumps(to_mapping(self), default=str))
        for name in ("generation", "eval_generation"):
            record[name] = comparable_options(record[name])
        return {k: v for k, v in record.items() if k not in FREE_OPTIONS}


def demo_config(out_dir: str | Path, **overrides: Any) -> RunConfig:
    """The ``--demo`` run: the bundled sample corpus, the built-in model, LoRA, small sizes
    (:data:`DEMO_SETTINGS`).

    ``overrides`` are :class:`RunConfig` fields, nested configs as mappings merged key by key
    over the demo's (``train={"max_steps": 3}`` keeps the demo's LoRA).

    >>> demo_config("demo-out").train.lora
    True
    """
    settings = load_recipe("demo").config
    return from_mapping(RunConfig, merge_mappings(settings, {"out_dir": out_dir, **overrides}))
