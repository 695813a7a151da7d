"""Evaluation data files and their kinds.

- ``pmi``: held-out personalization prompts, any corpus ``mipo build-pairs`` reads (question +
  context + user id columns, or a messages column), mapped by :func:`mipo.corpus.open_corpus`;
- ``choice``: JSONL/Parquet/CSV rows with ``question``, ``choices`` (a list) and ``answer`` (index,
  letter or choice text);
- ``math``: rows with ``question`` and ``answer`` holding the worked solution ending in ``#### N``
  (GSM8K), or just the number.

A file's kind is detected from its columns, or given as a prefix: ``choice:path``, ``math:path``,
``pmi:path``.

>>> split_kind("math:data/gsm8k.jsonl")
('math', 'data/gsm8k.jsonl')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mipo.errors import CorpusError
from mipo.prompt_format import DEFAULT_CONTEXT_FORMAT, PromptFormat

__all__ = [
    "KINDS",
    "MATH_FEWSHOT_PATH",
    "EvalDataset",
    "load_dataset",
    "load_fewshot",
    "split_kind",
]

KINDS = ("pmi", "choice", "math")

MATH_FEWSHOT_PATH = Path(__file__).resolve().parents[1] / "data" / "eval" / "math_fewshot.jsonl"
"""The shipped worked examples for k-shot math prompts (8, written for mipo, GSM8K-style)."""


@dataclass
class EvalDataset:
    """One evaluation file, loaded and standardized.

    ``frame`` columns by kind: pmi: ``id``, ``prompt`` (messages), ``prompt_nocontext`` (its
    messages without the context), ``question`` (their text, the key for question clusters),
    ``context`` (the user's context, "" if none),
    ``user_id`` (only with a user column); choice: ``question``, ``choices``, ``answer_index``;
    math: ``question``, ``answer`` (the gold text).
    """

    name: str
    kind: str
    path: Path
    frame: pl.DataFrame
    prompt_format: PromptFormat = field(default_factory=PromptFormat)
    """Where the context sits in ``prompt`` (and so in every contrast built from it)."""

    @property
    def has_users(self) -> bool:
        return "user_id" in self.frame.columns

    @property
    def has_context(self) -> bool:
        return self.kind == "pmi" and bool((self.frame["context"].str.len_chars() > 0).any())


def split_kind(spec: str) -> tuple[str | None, str]:
    """``"kind:path"`` -> ``(kind, path)``; a plain path -> ``(None, path)``."""
    head, sep, tail = spec.partition(":")
    if sep and head in KINDS:
        return head, tail
    return None, spec


def _read_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pl.read_ndjson(path)
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix == ".csv":
            return pl.read_csv(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise CorpusError(f"cannot read {path}: {str(e).splitlines()[0]}") from e
    raise CorpusError(f"{path}: unsupported format {suffix!r}; use .jsonl, .parquet or .csv")


def _detect_kind(path: Path) -> str:
    if path.is_file():
        try:
            columns = (
                set(_read_table(path).columns)
                if path.suffix.lower() != ".parquet"
                else set(pl.read_parquet_schema(path))
            )
        except CorpusError:
            columns = set()
        if "choices" in columns:
            return "choice"
        if {"question", "answer"} <= columns:
            return "math"
    return "pmi"


def _load_choice(path: Path) -> pl.DataFrame:
    from mipo.evaluate.answers import choice_index

    df = _read_table(path)
    missing = [c for c in ("question", "choices", "answer") if c not in df.columns]
    if missing:
        raise CorpusError(
            f"multiple-choice file {path} lacks column(s) {', '.join(missing)} "
            f"(has {', '.join(df.columns)})"
        )
    rows = []
    for i, row in enumerate(df.select("question", "choices", "answer").iter_rows(named=True)):
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise CorpusError(f"{path} row {i}: choices must be a list of at least 2 options")
        try:
            index = choice_index(row["answer"], choices)
        except ValueError as e:
            raise CorpusError(f"{path} row {i}: {e}") from e
        rows.append(
            {
                "question": str(row["question"]),
                "choices": [str(c) for c in choices],
                "answer_index": index,
            }
        )
    return pl.DataFrame(
        rows,
        schema={"question": pl.String, "choices": pl.List(pl.String), "answer_index": pl.Int64},
    )


def _load_math(path: Path) -> pl.DataFrame:
    from mipo.evaluate.answers import extract_number

    df = _read_table(path)
    missing = [c for c in ("question", "answer") if c not in df.columns]
    if missing:
        raise CorpusError(
            f"math file {path} lacks column(s) {', '.join(missing)} (has {', '.join(df.columns)})"
        )
    df = df.select(pl.col("question").cast(pl.String), pl.col("answer").cast(pl.String))
    bad = [i for i, a in enumerate(df["answer"].to_list()) if extract_number(a) is None]
    if bad:
        raise CorpusError(
            f"math file {path}: answer of row(s) {bad[:5]} holds no number "
            "(expected a solution ending in '#### N', or a number)"
        )
    return df


def _load_pmi(path: Path, context_format: str = DEFAULT_CONTEXT_FORMAT) -> pl.DataFrame:
    from mipo.corpus import ColumnOptions, open_corpus

    corpus = open_corpus(str(path), ColumnOptions(context_format=context_format))
    wanted = ["id", "prompt", "prompt_nocontext", "question_text", "context_text", "is_empty"]
    if corpus.has_users:
        wanted.append("user_id")
    df = corpus.collect(corpus.standardized(wanted)).filter(~pl.col("is_empty"))
    if df.height == 0:
        raise CorpusError(f"prompt file {path} has no usable prompts")
    columns = [
        pl.col("id"),
        pl.col("prompt"),
        pl.col("prompt_nocontext"),
        pl.col("question_text").alias("question"),
        pl.col("context_text").alias("context"),
    ]
    if corpus.has_users:
        columns.append(pl.col("user_id"))
    return df.select(columns)


def load_dataset(
    spec: str, *, limit: int | None = None, context_format: str = DEFAULT_CONTEXT_FORMAT
) -> EvalDataset:
    """Load one DATA argument (``[kind:]path``), keeping at most ``limit`` rows;
    ``context_format`` puts a pmi file's contexts into its prompts (:mod:`mipo.prompt_format`).

    >>> import importlib.resources
    >>> sample = importlib.resources.files("mipo") / "data" / "eval" / "choice_sample.jsonl"
    >>> load_dataset(f"choice:{sample}").kind
    'choice'
    """
    kind, path_text = split_kind(spec)
    path = Path(path_text)
    if not path.exists():
        raise CorpusError(f"evaluation data {path} not found")
    kind = kind or _detect_kind(path)
    loader: dict[str, Any] = {
        "pmi": lambda p: _load_pmi(p, context_format),
        "choice": _load_choice,
        "math": _load_math,
    }
    frame = loader[kind](path)
    if frame.height == 0:
        raise CorpusError(f"evaluation data {path} has no rows")
    if limit is not None:
        frame = frame.head(limit)
    name = path.stem if path.is_file() else path.name
    return EvalDataset(
        name=name, kind=kind, path=path, frame=frame, prompt_format=PromptFormat(context_format)
    )


def load_fewshot(path: str | Path | None, shots: int) -> list[tuple[str, str]]:
    """The first ``shots`` worked examples ``(question, solution)`` of a few-shot file (JSONL /
    Parquet / CSV with ``question`` and ``answer`` ending in ``#### N``); ``None``: the shipped
    file. ``shots == 0`` reads nothing.

    >>> [q[:9] for q, _ in load_fewshot(None, 2)]
    ['A bakery ', 'Priya wan']
    """
    if shots == 0:
        return []
    path = Path(path) if path is not None else MATH_FEWSHOT_PATH
    if not path.is_file():
        raise CorpusError(f"few-shot file {path} not found")
    frame = _load_math(path)
    if frame.height < shots:
        raise CorpusError(
            f"few-shot file {path} holds {frame.height} examples, fewer than the {shots} shots "
            "asked for: lower math_shots (--set math_shots=N) or add examples"
        )
    examples = list(zip(frame["question"].to_list(), frame["answer"].to_list(), strict=True))
    no_marker = [i for i, (_, a) in enumerate(examples[:shots]) if "####" not in a]
    if no_marker:
        raise CorpusError(
            f"few-shot file {path}: answer of row(s) {no_marker[:5]} lacks the final "
            "'#### N' line the examples are meant to teach"
        )
    return examples[:shots]
