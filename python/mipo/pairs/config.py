"""The options of ``mipo build-pairs``: :class:`BuildPairsConfig` (the generation's own settings
nested as ``generation``, a :class:`~mipo.generate.config.GenerationConfig`), and the ``--shard``
syntax.

>>> BuildPairsConfig("in.jsonl", "out").generation.max_new_tokens
512
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from mipo.corpus import ColumnOptions
from mipo.errors import ConfigError
from mipo.generate.config import GenerationConfig
from mipo.pairs.assemble import PairFilterConfig
from mipo.pairs.negatives import NegativeStrategy, parse_strategy, strategy_kinds

__all__ = ["EXECUTORS", "BuildPairsConfig", "parse_shard"]

EXECUTORS = ("local", "ray")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``.

    >>> parse_shard("1/4")
    (1, 4)
    """
    if text is None:
        return (0, 1)
    if isinstance(text, tuple):
        index, count = text
    else:
        match = _SHARD.match(text)
        if not match:
            raise ConfigError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"--shard {index}/{count} is invalid: N must be >= 1 and I in 0..N-1 (e.g. 0/{max(count, 2)})"
        )
    return index, count


@dataclass(frozen=True)
class BuildPairsConfig:
    """Every option of ``mipo build-pairs`` (see ``mipo build-pairs --help``).

    >>> BuildPairsConfig("in.jsonl", "out", seed=3).generation.seed
    3
    """

    CONFIG_DERIVED: ClassVar[dict[str, tuple[str, ...]]] = {
        "generation": ("seed", "trust_remote_code")
    }

    input: str
    """Parquet, JSONL or CSV file, a folder of them, or a glob of shards."""
    out_dir: str | Path
    """Output folder (created; a rerun into it continues)."""
    model: str | None = None
    """Model spec for :func:`mipo.models.resolve_model`; None: the built-in default."""
    plan_only: bool = False
    """Stop after writing ``plan.parquet``."""
    negatives: NegativeStrategy = "random"
    """``random`` (another prompt's response), ``context-drop`` (the response to the prompt
    without its context), ``context-swap`` (to the question with another user's context),
    ``sentence-drop`` (to the prompt with one non-final sentence of its question removed, picked
    by a seeded hash of the row: the paper's negative for math), or a comma-separated list of
    them (one pair of each per prompt; ``both`` = ``random,context-drop``)."""
    independent_negatives: bool = False
    """Sample a separate response to σ(i) for each prompt instead of reusing σ(i)'s own."""
    columns: ColumnOptions = field(default_factory=ColumnOptions)
    """Input column names; None fields are detected."""
    seed: int = 0
    """Seed of the negatives and of every per-request sampling seed."""
    max_prompt_tokens: int | None = None
    """Drop longer prompts; None: the model's context length minus ``max_new_tokens``."""
    dedup: bool = True
    """Remove exact and near-duplicate prompts (False keeps them, still never paired together)."""
    near_dup_threshold: float = 0.8
    """Jaccard similarity at or above which two prompts are near duplicates."""
    user_constraint: bool = True
    """With a user column, take each random negative from another user."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """How the responses are sampled and batched (:class:`~mipo.generate.GenerationConfig`);
    its ``seed`` and ``trust_remote_code`` are this config's."""
    shard: tuple[int, int] = (0, 1)
    """Generate only chunks ``k`` with ``k % N == I``."""
    keep_truncated: bool = False
    """Keep pairs whose responses hit ``max_new_tokens``."""
    score: bool = False
    """Score margins under the reference model and drop pairs below ``min_margin``."""
    min_margin: float = 0.0
    """Least log π(y+|x) − log π(y−|x) with ``score``."""
    drop_persona: bool = False
    """Drop pairs whose chosen answer speaks as the user (restates their context in the first
    person), so DPO does not teach the model to become the user."""
    overwrite: bool = False
    """Discard outputs of a run with other options (from the first changed stage on)."""
    trust_remote_code: bool = False
    """Allow the model's own Python code."""
    allow_pickle: bool = False
    """Allow pickle-based weights."""
    progress: bool = True
    """Show progress bars (stderr)."""
    plan_batch_rows: int = 65_536
    """Rows per streamed batch of the plan stage (bounds its memory)."""
    executor: str = "local"
    """Where generation runs: ``local`` (this process) or ``ray`` (actors on a Ray cluster, one
    model copy each). Not part of any stage's options: both write the same chunks, so a run can
    be resumed with the other executor."""
    num_workers: int | None = None
    """With ``executor="ray"``: model copies to run; None: as many as the cluster fits."""
    ray_address: str | None = None
    """With ``executor="ray"``: the cluster to join; None: ``$RAY_ADDRESS``, else a cluster
    started on this machine with ``ray start``, else a local Ray runtime."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "negatives", parse_strategy(self.negatives))
        if not isinstance(self.generation, GenerationConfig):
            raise ConfigError(
                f"generation must be a GenerationConfig, got {type(self.generation).__name__}"
            )
        # One seed and one trust setting for the whole run: the generation takes this config's.
        object.__setattr__(
            self,
            "generation",
            replace(self.generation, seed=self.seed, trust_remote_code=self.trust_remote_code),
        )
        parse_shard(self.shard)
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.independent_negatives and not {"random", "context-swap"} & set(
            strategy_kinds(self.negatives)
        ):
            raise ConfigError(
                "independent_negatives applies to random and context-swap negatives; it does "
                f"nothing with --negatives {self.negatives}: set it false or add random or "
                "context-swap"
            )
        if self.min_margin != 0.0 and not self.score:
            raise ConfigError(
                "min_margin needs --set score=true (margins are computed only when scoring)"
            )
        PairFilterConfig(self.keep_truncated, self.score, self.min_margin)
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}"
            )
        if self.num_workers is not None and (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 1
        ):
            raise ConfigError(f"--num-workers must be an integer >= 1, got {self.num_workers!r}")
        if self.executor != "ray":
            for flag, value in (
                ("--num-workers", self.num_workers),
                ("ray_address", self.ray_address),
            ):
                if value is not None:
                    raise ConfigError(
                        f"{flag} applies to Ray workers only: add --executor ray or drop {flag}"
                    )
