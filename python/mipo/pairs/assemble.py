"""Generation requests from a plan, and preference pairs from the generated responses.

Every response the pipeline generates is one *request*, identified by ``request_id =
4 * plan_index + kind``:

- kind 0 (:data:`KIND_FULL`): prompt i as written (context included) — i's chosen answer, and
  with reused random negatives also the rejected answer of the prompt j with σ(j) = i;
- kind 1 (:data:`KIND_NOCONTEXT`): prompt i with its context removed (``context-drop``);
- kind 2 (:data:`KIND_NEGATIVE`): prompt σ(i), sampled again for i (``independent_negatives``);
- kind 3 (:data:`KIND_SWAP`): i's question asked with another user's context (``context-swap``
  where no other user asked it; with ``independent_negatives`` also the partner's prompt,
  sampled again for i);
- :data:`KIND_SENTENCE_DROP`: prompt i with one non-final sentence of its question removed, its
  context kept whole (``sentence-drop``, :func:`mipo.pairs.negatives.sentence_drops`). Its ids
  are ``SENTENCE_DROP_OFFSET + plan_index`` (2**62 and up), so the ids of the first four kinds, and
  the sampling seeds derived from them, are those of runs without it.

Seeds are derived per request from the run seed and the request id
(:func:`mipo.generate.request_seeds`, SplitMix64), so a response does not depend on batch
composition, chunking or sharding.

Pairs carry exactly what TRL's ``DPOTrainer`` takes — ``prompt`` (the messages of prompt i),
``chosen`` and ``rejected`` (one assistant message each) — plus provenance columns. The rejected
answer is always attached to prompt i: the negative is scored under x, not under the prompt that
produced it.

>>> import polars as pl
>>> from mipo.pairs import request_ids, KIND_NOCONTEXT
>>> request_ids(pl.Series([0, 1, 2]), KIND_NOCONTEXT).to_list()
[1, 5, 9]
>>> from mipo.pairs.assemble import KIND_SENTENCE_DROP, SENTENCE_DROP_OFFSET
>>> request_ids(pl.Series([0, 1]), KIND_SENTENCE_DROP).to_list() == [
...     SENTENCE_DROP_OFFSET, SENTENCE_DROP_OFFSET + 1]
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mipo.corpus import MESSAGE_DTYPE
from mipo.errors import ConfigError, GenerationError
from mipo.pairs.negatives import (
    NegativeStrategy,
    parse_strategy,
    sentence_drops,
    strategy_kinds,
)

if TYPE_CHECKING:
    from mipo.engine import ChatTokenizer

__all__ = [
    "FILTERS",
    "KIND_FULL",
    "KIND_NEGATIVE",
    "KIND_NOCONTEXT",
    "KIND_SENTENCE_DROP",
    "KIND_SWAP",
    "NEAR_IDENTICAL_JACCARD",
    "SENTENCE_DROP_OFFSET",
    "PairFilterConfig",
    "PairStats",
    "assemble_pairs",
    "build_requests",
    "filter_pairs",
    "filter_verdict",
    "request_ids",
]

KIND_FULL = 0
KIND_NOCONTEXT = 1
KIND_NEGATIVE = 2
KIND_SWAP = 3
KIND_SENTENCE_DROP = 4
_KINDS = 4  # request ids: 4 * plan_index + kind, for kinds 0-3
SENTENCE_DROP_OFFSET = 1 << 62
"""Request ids of :data:`KIND_SENTENCE_DROP` are this plus the plan index."""

FILTERS = ("empty_response", "identical", "near_identical", "truncated", "persona", "low_margin")
"""Pair filters in the order they apply; a pair is counted under the first one that drops it."""

FILTER_REMEDIES = {
    "empty_response": "the model wrote empty responses: check its chat template, or use an "
    "instruct model",
    "identical": "chosen and rejected responses were the same text: sample with a higher "
    "temperature (--set generation.temperature=T), or choose other --negatives",
    "near_identical": "chosen and rejected responses were nearly the same: choose other "
    "--negatives (context-swap or random), or sample with a higher temperature "
    "(--set generation.temperature=T)",
    "truncated": "responses hit the token limit: raise --generation-max-new-tokens, or pass "
    "--keep-truncated to keep truncated pairs",
    "persona": "chosen answers spoke as the user: drop --drop-persona (--set drop_persona=false)",
    "low_margin": "margins were below min_margin: lower --set min_margin=M, or --set score=false",
}
"""What each filter's drops mean and the option that changes it (for :func:`filter_verdict`)."""


def request_ids(plan_index: Any, kind: int) -> Any:
    """The request id of ``kind`` for each plan index (a UInt64 Series or expression)."""
    if kind == KIND_SENTENCE_DROP:
        return plan_index.cast(pl.UInt64) + SENTENCE_DROP_OFFSET
    return plan_index.cast(pl.UInt64) * _KINDS + kind


def build_requests(
    plan: pl.DataFrame,
    *,
    strategy: NegativeStrategy,
    independent_negatives: bool,
    seed: int,
    tokenizer: ChatTokenizer | None = None,
) -> pl.DataFrame:
    """The generation requests of a plan: ``request_id`` (UInt64, sorted), ``input_ids``
    (List UInt32), ``seed`` (UInt64).

    One request per prompt; with ``context-drop``, one more per prompt that has a context; with
    ``context-swap``, one more per prompt whose swap is generated (every swapped prompt with
    ``independent_negatives``); with ``independent_negatives`` and ``random``, one more per
    prompt for σ(i)'s prompt; with ``sentence-drop``, one more per prompt of two or more
    sentences, whose prompt ``tokenizer`` (the model's chat tokenizer, needed for it) encodes.
    """
    from mipo.generate import request_seeds

    parse_strategy(strategy)
    kinds = strategy_kinds(strategy)
    frames = [
        plan.select(
            request_ids(pl.col("plan_index"), KIND_FULL).alias("request_id"),
            pl.col("input_ids"),
        )
    ]
    if "context-drop" in kinds:
        frames.append(
            plan.filter(pl.col("input_ids_nocontext").is_not_null()).select(
                request_ids(pl.col("plan_index"), KIND_NOCONTEXT).alias("request_id"),
                pl.col("input_ids_nocontext").alias("input_ids"),
            )
        )
    if "random" in kinds and independent_negatives:
        frames.append(
            plan.select(
                request_ids(pl.col("plan_index"), KIND_NEGATIVE).alias("request_id"),
                plan["input_ids"].gather(plan["negative_index"]).alias("input_ids"),
            )
        )
    if "context-swap" in kinds:
        frames.append(_swap_requests(plan, independent_negatives))
    if "sentence-drop" in kinds:
        if tokenizer is None:
            raise ValueError("sentence-drop requests need the chat tokenizer (tokenizer=...)")
        frames.append(_sentence_drop_requests(plan, tokenizer, seed))
    requests = pl.concat(frames).sort("request_id")
    seeds = request_seeds(requests["request_id"].to_list(), seed)
    return requests.with_columns(pl.Series("seed", seeds, dtype=pl.UInt64))


def _swap_requests(plan: pl.DataFrame, independent_negatives: bool) -> pl.DataFrame:
    """The ``context-swap`` requests: generated swaps, and with ``independent_negatives``
    the partner's prompt sampled again for reused ones."""
    partner_ids = plan["input_ids"].gather(plan["swap_index"].fill_null(0))
    swapped = plan.with_columns(
        pl.when(pl.col("swap_source") == "generated")
        .then(pl.col("input_ids_swap"))
        .when((pl.col("swap_source") == "reused") & pl.lit(independent_negatives))
        .then(partner_ids)
        .otherwise(None)
        .alias("_swap_ids")
    ).filter(pl.col("_swap_ids").is_not_null())
    return swapped.select(
        request_ids(pl.col("plan_index"), KIND_SWAP).alias("request_id"),
        pl.col("_swap_ids").alias("input_ids"),
    )


def _sentence_drops(plan: pl.DataFrame, seed: int) -> pl.DataFrame:
    """``plan_index`` and the sentence-dropped prompt of each plan row that has one: a sentence
    of its question only, told from its context by the plan's ``prompt_nocontext``."""
    questions = plan["prompt_nocontext"] if "prompt_nocontext" in plan.columns else None
    if questions is None and "has_context" in plan.columns and plan["has_context"].any():
        raise ConfigError(
            "--negatives sentence-drop drops a sentence of each question, but this plan's "
            f"{int(plan['has_context'].sum())} prompts with a context lack the prompt without "
            "it (prompt_nocontext), so their question cannot be told from their context: "
            "rebuild the plan with --overwrite (a plan built for sentence-drop keeps it)"
        )
    drops = sentence_drops(plan["prompt"], plan["id"], seed=seed, questions=questions)
    return pl.DataFrame([plan["plan_index"], drops["prompt_sentence_drop"]]).filter(
        pl.col("prompt_sentence_drop").is_not_null()
    )


def _sentence_drop_requests(
    plan: pl.DataFrame, tokenizer: ChatTokenizer, seed: int
) -> pl.DataFrame:
    """The ``sentence-drop`` requests: prompt i without one non-final sentence of its
    question."""
    drops = _sentence_drops(plan, seed)
    if drops.height:
        input_ids = tokenizer.encode_chat(drops["prompt_sentence_drop"])["input_ids"]
    else:
        input_ids = pl.Series("input_ids", [], dtype=pl.List(pl.UInt32))
    return pl.DataFrame(
        [
            request_ids(drops["plan_index"], KIND_SENTENCE_DROP).alias("request_id"),
            input_ids.cast(plan.schema["input_ids"]).alias("input_ids"),
        ]
    )


@dataclass(frozen=True)
class PairFilterConfig:
    """Which pairs to drop after assembly."""

    keep_truncated: bool = False
    """Keep pairs whose chosen or rejected response hit ``generation.max_new_tokens``
    (finish_reason length)."""
    score: bool = False
    """Score both responses under the reference model and drop pairs below ``min_margin``."""
    min_margin: float = 0.0
    """Least log π(y+|x) − log π(y−|x) a pair must have to be kept when ``score`` is on."""
    score_batch_size: int = 8
    """Pairs scored per forward pass."""
    drop_persona: bool = False
    """Drop pairs whose chosen answer speaks *as* the user (restates their context in the first
    person, :func:`mipo.evaluate.controls.persona_sentence`): DPO would teach the model that
    becoming the user is what makes an answer specific to them."""

    def __post_init__(self) -> None:
        if self.score_batch_size < 1:
            raise ConfigError(f"score batch size must be >= 1, got {self.score_batch_size}")
        if self.min_margin != self.min_margin:  # NaN
            raise ConfigError("min_margin must be a number, got nan")


@dataclass
class PairStats:
    """What the pairs stage did, for ``stats.json`` and the summary table."""

    prompts: int = 0
    pairs_built: dict[str, int] = field(default_factory=dict)
    no_context_skipped: int = 0
    no_swap_skipped: int = 0
    no_sentence_skipped: int = 0
    """Prompts whose question has one sentence: no ``sentence-drop`` pair."""
    swap_sources: dict[str, int] = field(default_factory=dict)
    length_ratio: dict[str, dict[str, float]] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    pairs_written: int = 0
    pairs_written_by_strategy: dict[str, int] = field(default_factory=dict)
    margin_mean: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _assistant(content: pl.Expr) -> pl.Expr:
    message = pl.struct(pl.lit("assistant").alias("role"), content.alias("content"))
    return pl.concat_list([message]).cast(MESSAGE_DTYPE)


def _check_complete(responses: pl.DataFrame, needed: pl.Series) -> None:
    missing = needed.filter(~needed.is_in(responses["request_id"].implode()))
    if missing.len():
        raise GenerationError(
            f"{missing.len()} of {needed.len()} responses are missing (first request id "
            f"{missing[0]}): generation did not finish; rerun the same command to resume it"
        )


def assemble_pairs(
    plan: pl.DataFrame,
    responses: pl.DataFrame,
    *,
    strategy: NegativeStrategy,
    independent_negatives: bool,
    seed: int,
    stats: PairStats | None = None,
) -> pl.DataFrame:
    """Join plan and responses into pairs (unfiltered), ordered by prompt then strategy.

    ``responses`` needs ``request_id``, ``response``, ``num_response_tokens``,
    ``finish_reason`` and ``seed`` (what :func:`mipo.generate.run_generation` returns).
    """
    kinds = strategy_kinds(strategy)
    stats = stats if stats is not None else PairStats()
    stats.prompts = plan.height
    resp = _response_table(responses)
    frames = []
    for order, kind in enumerate(kinds):
        part = _pair_rows(plan, kind, independent_negatives, seed, stats)
        frames.append(
            part.with_columns(pl.lit(kind).alias("strategy"), pl.lit(order, pl.UInt8).alias("_o"))
        )
        stats.pairs_built[kind] = part.height
    pairs = pl.concat(frames).sort("plan_index", "_o")
    needed = pl.concat([pairs["chosen_request"], pairs["rejected_request"]]).unique(
        maintain_order=True
    )
    _check_complete(resp, needed)
    pairs = _join_responses(_join_responses(pairs, resp, "chosen"), resp, "rejected")
    return pairs.select(_pair_columns("user_id" in plan.columns, seed))


def _response_table(responses: pl.DataFrame) -> pl.DataFrame:
    """The responses' columns the pairs use, typed, one row per request id."""
    return responses.select(
        pl.col("request_id").cast(pl.UInt64),
        pl.col("response").cast(pl.String),
        pl.col("num_response_tokens").cast(pl.UInt32),
        pl.col("finish_reason").cast(pl.String),
        pl.col("seed").cast(pl.UInt64),
    ).unique("request_id", keep="first", maintain_order=True)


def _pair_rows(
    plan: pl.DataFrame, kind: str, independent_negatives: bool, seed: int, stats: PairStats
) -> pl.DataFrame:
    """One strategy's pairs before their responses are joined: the plan's provenance columns,
    ``negative_id``, ``chosen_request`` and ``rejected_request``. Rows without a negative of
    that kind are counted in ``stats``."""
    base = [pl.col("plan_index"), pl.col("id"), pl.col("prompt"), pl.col("num_prompt_tokens")]
    if "user_id" in plan.columns:
        base.append(pl.col("user_id"))
    chosen = request_ids(pl.col("plan_index"), KIND_FULL).alias("chosen_request")
    if kind == "random":
        rejected = (
            request_ids(pl.col("plan_index"), KIND_NEGATIVE)
            if independent_negatives
            else request_ids(pl.col("negative_index"), KIND_FULL)
        )
        return plan.select(*base, pl.col("negative_id"), chosen, rejected.alias("rejected_request"))
    if kind == "context-drop":
        has = plan.filter(pl.col("input_ids_nocontext").is_not_null())
        stats.no_context_skipped = plan.height - has.height
        rejected = request_ids(pl.col("plan_index"), KIND_NOCONTEXT)
        return has.select(
            *base, pl.col("id").alias("negative_id"), chosen, rejected.alias("rejected_request")
        )
    if kind == "sentence-drop":
        has = plan.filter(
            pl.col("plan_index").is_in(_sentence_drops(plan, seed)["plan_index"].implode())
        )
        stats.no_sentence_skipped = plan.height - has.height
        rejected = request_ids(pl.col("plan_index"), KIND_SENTENCE_DROP)
        return has.select(
            *base, pl.col("id").alias("negative_id"), chosen, rejected.alias("rejected_request")
        )
    has = plan.filter(pl.col("swap_source").is_not_null())
    stats.no_swap_skipped = plan.height - has.height
    stats.swap_sources = {
        str(k): int(v) for k, v in has["swap_source"].value_counts(sort=True).iter_rows()
    }
    reused = (pl.col("swap_source") == "reused") & pl.lit(not independent_negatives)
    rejected = (
        pl.when(reused)
        .then(request_ids(pl.col("swap_index"), KIND_FULL))
        .otherwise(request_ids(pl.col("plan_index"), KIND_SWAP))
    )
    return has.select(
        *base, pl.col("swap_id").alias("negative_id"), chosen, rejected.alias("rejected_request")
    )


def _join_responses(frame: pl.DataFrame, resp: pl.DataFrame, name: str) -> pl.DataFrame:
    """``frame`` with the response of its ``{name}_request`` as ``{name}_text``,
    ``{name}_num_tokens``, ``{name}_finish_reason`` and ``{name}_seed``."""
    renamed = resp.rename(
        {
            "request_id": f"{name}_request",
            "response": f"{name}_text",
            "num_response_tokens": f"{name}_num_tokens",
            "finish_reason": f"{name}_finish_reason",
            "seed": f"{name}_seed",
        }
    )
    return frame.join(renamed, on=f"{name}_request", how="left", maintain_order="left")


def _pair_columns(has_users: bool, seed: int) -> list[pl.Expr]:
    """The columns of a pairs file, in order: TRL's three, then provenance."""
    columns = [
        pl.col("prompt"),
        _assistant(pl.col("chosen_text")).alias("chosen"),
        _assistant(pl.col("rejected_text")).alias("rejected"),
        pl.col("id"),
        pl.col("negative_id"),
    ]
    if has_users:
        columns.append(pl.col("user_id"))
    return [
        *columns,
        pl.col("strategy"),
        pl.lit(seed, pl.UInt64).alias("seed"),
        pl.col("chosen_seed"),
        pl.col("rejected_seed"),
        pl.col("num_prompt_tokens"),
        pl.col("chosen_num_tokens"),
        pl.col("rejected_num_tokens"),
        pl.col("chosen_finish_reason"),
        pl.col("rejected_finish_reason"),
        pl.col("plan_index"),
    ]


def _content(column: str) -> pl.Expr:
    return pl.col(column).list.first().struct.field("content")


def filter_pairs(
    pairs: pl.DataFrame,
    config: PairFilterConfig,
    *,
    model_path: str | Path | None = None,
    stats: PairStats | None = None,
    plan: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Drop empty, identical, truncated (with ``config.drop_persona``, those whose chosen answer
    speaks as the user; with ``config.score``, low-margin) pairs.

    Each dropped pair is counted in ``stats.filtered`` under the first filter that drops it.
    ``drop_persona`` needs the ``plan`` (its ``prompt_nocontext`` tells the context's words
    from the question's). Scoring needs ``model_path`` (the reference model: the one that
    generated the responses) and adds ``chosen_logprob``, ``rejected_logprob`` and ``margin`` columns.
    """
    stats = stats if stats is not None else PairStats()

    def drop(frame: pl.DataFrame, name: str, bad: pl.Expr) -> pl.DataFrame:
        mask = frame.select(bad.fill_null(True)).to_series()
        stats.filtered[name] = stats.filtered.get(name, 0) + int(mask.sum())
        return frame.filter(~mask)

    chosen, rejected = _content("chosen"), _content("rejected")
    pairs = drop(
        pairs,
        "empty_response",
        (chosen.str.strip_chars() == "") | (rejected.str.strip_chars() == ""),
    )
    pairs = drop(pairs, "identical", chosen == rejected)
    if pairs.height:
        pairs = drop(pairs, "near_identical", _near_identical(pairs))
    if not config.keep_truncated:
        pairs = drop(
            pairs,
            "truncated",
            (pl.col("chosen_finish_reason") == "length")
            | (pl.col("rejected_finish_reason") == "length"),
        )
    if config.drop_persona and pairs.height:
        if plan is None:
            raise ConfigError("dropping persona pairs needs the plan (prompt_nocontext)")
        pairs = drop(pairs, "persona", _chosen_speaks_as_user(pairs, plan))
    if config.score and pairs.height:
        if model_path is None:
            raise ConfigError("score=true needs the reference model's path")
        pairs = _add_margins(pairs, model_path, config.score_batch_size)
        stats.margin_mean = float(pairs["margin"].mean())  # type: ignore[arg-type]
        pairs = drop(pairs, "low_margin", pl.col("margin") < config.min_margin)
    stats.pairs_written = pairs.height
    stats.length_ratio = _length_ratios(pairs)
    stats.pairs_written_by_strategy = {
        str(k): int(v) for k, v in pairs["strategy"].value_counts(sort=True).iter_rows()
    }
    return pairs


def filter_verdict(stats: PairStats) -> tuple[str | None, list[str]]:
    """``(error, warnings)`` for a pairs stage that assembled and filtered ``stats``: an error
    when no pair is left (naming the filter that dropped the most, or why none was built, and the
    option that changes it), a warning for each filter that dropped more than half the pairs.

    >>> stats = PairStats(pairs_built={"random": 24})
    >>> stats.filtered["truncated"] = 24
    >>> print(filter_verdict(stats)[0])
    0 pairs left: the truncated filter dropped 24 of 24 pairs (responses hit the token limit: raise --generation-max-new-tokens, or pass --keep-truncated to keep truncated pairs)
    """
    built = sum(stats.pairs_built.values())
    warnings = [
        f"the {name.replace('_', '-')} filter dropped {count} of {built} pairs "
        f"({FILTER_REMEDIES.get(name, 'see stats.json')})"
        for name, count in stats.filtered.items()
        if built and count * 2 > built
    ]
    if stats.pairs_written:
        return None, warnings
    if not built:
        if stats.no_sentence_skipped and not (stats.no_context_skipped or stats.no_swap_skipped):
            return (
                "0 pairs built: every question is a single sentence, so sentence-drop has no "
                "sentence to drop; choose --negatives random, or check the corpus's prompt column"
            ), []
        skipped = (
            "the prompts have no user context"
            if stats.no_context_skipped or stats.no_swap_skipped
            else "the plan holds no prompt"
        )
        return (
            f"0 pairs built: {skipped}; choose --negatives random, or check the corpus columns "
            "(--set columns.context=NAME, --set columns.user=NAME)"
        ), []
    name, count = max(stats.filtered.items(), key=lambda item: item[1])
    return (
        f"0 pairs left: the {name.replace('_', '-')} filter dropped {count} of {built} pairs "
        f"({FILTER_REMEDIES.get(name, 'see stats.json')})"
    ), []


NEAR_IDENTICAL_JACCARD = 0.9
"""Pairs whose chosen and rejected share at least this Jaccard similarity of their word sets
(after normalization) teach nothing and are dropped as ``near_identical``."""

LENGTH_RATIO_FLAG = 1.5
"""A pair whose longer response has at least this many times the tokens of the shorter one
differs mostly by length; ``stats.json`` reports how many such pairs each strategy has."""


def _near_identical(pairs: pl.DataFrame) -> pl.Expr:
    """Normalized texts equal (NFKC, case folding, whitespace) or word-set Jaccard >= 0.9."""
    from mipo import engine

    chosen = engine.normalize(pairs.select(_content("chosen")).to_series().fill_null(""))
    rejected = engine.normalize(pairs.select(_content("rejected")).to_series().fill_null(""))
    a, b = chosen.str.split(" "), rejected.str.split(" ")
    both = pl.DataFrame({"a": a, "b": b, "ea": chosen == rejected})
    jaccard = both.select(
        (
            pl.col("a").list.set_intersection(pl.col("b")).list.len()
            / pl.col("a").list.set_union(pl.col("b")).list.len()
        ).alias("j")
    )["j"]
    return pl.lit(((both["ea"]) | (jaccard >= NEAR_IDENTICAL_JACCARD)).fill_null(False))


def _chosen_speaks_as_user(pairs: pl.DataFrame, plan: pl.DataFrame) -> pl.Expr:
    """Whether each pair's chosen answer speaks as the user. The user's details are the words
    of the prompt that its question lacks (whatever the prompt format put around them)."""
    from mipo.evaluate.controls import persona_sentence

    def text(messages: list[dict[str, str]] | None) -> str:
        return "\n".join(m.get("content") or "" for m in messages or [])

    bare = dict(zip(plan["plan_index"].to_list(), plan["prompt_nocontext"].to_list(), strict=True))
    flags = []
    for index, prompt, chosen in zip(
        pairs["plan_index"].to_list(),
        pairs["prompt"].to_list(),
        pairs.select(_content("chosen")).to_series().to_list(),
        strict=True,
    ):
        question = set(text(bare.get(index)).casefold().split())
        details = " ".join(w for w in text(prompt).split() if w.casefold() not in question)
        flags.append(persona_sentence(chosen, details) is not None)
    return pl.lit(pl.Series(flags, dtype=pl.Boolean))


def _length_ratios(pairs: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Per strategy: median of longer/shorter response tokens, and the share of pairs whose
    ratio is at least :data:`LENGTH_RATIO_FLAG` (pairs that differ mostly by length)."""
    if not pairs.height:
        return {}
    longer = pl.max_horizontal("chosen_num_tokens", "rejected_num_tokens").cast(pl.Float64)
    shorter = pl.min_horizontal("chosen_num_tokens", "rejected_num_tokens").cast(pl.Float64)
    ratio = longer / pl.max_horizontal(shorter, pl.lit(1.0))
    table = pairs.group_by("strategy", maintain_order=True).agg(
        ratio.median().alias("median"),
        (ratio >= LENGTH_RATIO_FLAG).mean().alias("share_ge"),
        (pl.col("chosen_num_tokens") > pl.col("rejected_num_tokens")).mean().alias("chosen_longer"),
    )
    return {
        str(row["strategy"]): {
            "median_ratio": round(float(row["median"]), 3),
            f"share_ratio_ge_{LENGTH_RATIO_FLAG:g}": round(float(row["share_ge"]), 4),
            "share_chosen_longer": round(float(row["chosen_longer"]), 4),
        }
        for row in table.iter_rows(named=True)
    }


def _add_margins(pairs: pl.DataFrame, model_path: str | Path, batch_size: int) -> pl.DataFrame:
    """log π(y+|x) − log π(y−|x) under the reference model, both scored under prompt x."""
    from mipo.scoring import score_responses

    prompts = pairs["prompt"].to_list()
    chosen = score_responses(
        model_path,
        prompts,
        pairs.select(_content("chosen")).to_series().to_list(),
        batch_size=batch_size,
    )
    rejected = score_responses(
        model_path,
        prompts,
        pairs.select(_content("rejected")).to_series().to_list(),
        batch_size=batch_size,
    )
    return pairs.with_columns(
        chosen["logprob"].cast(pl.Float64).alias("chosen_logprob"),
        rejected["logprob"].cast(pl.Float64).alias("rejected_logprob"),
    ).with_columns((pl.col("chosen_logprob") - pl.col("rejected_logprob")).alias("margin"))
