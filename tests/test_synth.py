"""Synthetic corpora (`mipo synth`), held-out eval prompts and the bundled sample corpus."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from mipo.cli import cli
from mipo.errors import ConfigError, OutputError
from mipo.synth import (
    COLUMNS,
    SAMPLE_CORPUS_PATH,
    SynthConfig,
    load_sample_corpus,
    synth_eval,
    synth_frame,
    write_frames,
    write_synth,
)


def _words(context: str, question: str) -> list[str]:
    # The reference normalization of dedup: case folding and whitespace collapsing.
    return f"{context} {question}".casefold().split()


def _shingles(context: str, question: str, n: int = 5) -> set[tuple[str, ...]]:
    words = _words(context, question)
    return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def _jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b)


@pytest.fixture(scope="module")
def corpus() -> pl.DataFrame:
    return synth_frame(SynthConfig(rows=20_000, seed=11, exact_dup_rate=0.04, near_dup_rate=0.06))


def _by_id(frame: pl.DataFrame) -> dict[str, dict[str, str | None]]:
    return {row["id"]: row for row in frame.iter_rows(named=True)}


# --- determinism -----------------------------------------------------------------------------


def test_same_config_writes_byte_identical_files(tmp_path: Path) -> None:
    config = SynthConfig(rows=3_000, seed=5, batch_rows=1_000)
    first = write_synth(config, tmp_path / "a.parquet").path.read_bytes()
    second = write_synth(config, tmp_path / "b.parquet").path.read_bytes()
    other_seed = write_synth(
        SynthConfig(rows=3_000, seed=6, batch_rows=1_000), tmp_path / "c.parquet"
    )
    assert first == second
    assert first != other_seed.path.read_bytes()


def test_rows_do_not_depend_on_batch_size() -> None:
    whole = synth_frame(rows=2_500, seed=3, batch_rows=100_000)
    batched = synth_frame(rows=2_500, seed=3, batch_rows=333)
    assert whole.equals(batched)
    assert whole.columns == list(COLUMNS)
    assert whole["id"].is_unique().all()


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_text_formats_hold_the_same_rows(tmp_path: Path, suffix: str) -> None:
    config = SynthConfig(rows=1_500, seed=2, batch_rows=400)
    path = write_synth(config, tmp_path / f"corpus.{suffix}").path
    read = pl.read_ndjson(path) if suffix == "jsonl" else pl.read_csv(path, infer_schema=False)
    assert read.select(COLUMNS).equals(synth_frame(config))


# --- planted duplicates ----------------------------------------------------------------------


def test_planted_rates_are_within_tolerance(corpus: pl.DataFrame) -> None:
    n = corpus.height
    for kind, rate in (("exact", 0.04), ("near", 0.06)):
        count = int((corpus["dup_kind"] == kind).sum())
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(count - n * rate) < 5 * sigma, (kind, count)
    assert corpus.filter(pl.col("dup_kind").is_null())["dup_of"].null_count() == (
        corpus["dup_kind"].null_count()
    )


def test_dup_of_points_to_an_earlier_original_of_the_same_user(corpus: pl.DataFrame) -> None:
    rows = _by_id(corpus)
    position = {row_id: i for i, row_id in enumerate(corpus["id"])}
    dups = corpus.filter(pl.col("dup_kind").is_not_null())
    assert dups.height > 1_000
    for dup in dups.iter_rows(named=True):
        original = rows[dup["dup_of"]]
        assert position[dup["dup_of"]] < position[dup["id"]]
        assert original["dup_kind"] is None and original["dup_of"] is None
        assert original["user_id"] == dup["user_id"]
    # Originals are drawn from the whole past, not only the current batch.
    gaps = [position[d["id"]] - position[d["dup_of"]] for d in dups.iter_rows(named=True)]
    assert max(gaps) > 10_000


def test_exact_duplicates_equal_their_original_after_normalization(corpus: pl.DataFrame) -> None:
    rows = _by_id(corpus)
    exact = corpus.filter(pl.col("dup_kind") == "exact").iter_rows(named=True)
    raw_differs = 0
    for dup in exact:
        original = rows[dup["dup_of"]]
        assert _words(dup["context"], dup["question"]) == _words(
            original["context"], original["question"]
        )
        raw_differs += (dup["context"], dup["question"]) != (
            original["context"],
            original["question"],
        )
    assert raw_differs > 300  # most copies vary whitespace or case, so normalization matters


def test_near_duplicates_are_near_but_not_exact(corpus: pl.DataFrame) -> None:
    rows = _by_id(corpus)
    similarities = []
    for dup in corpus.filter(pl.col("dup_kind") == "near").iter_rows(named=True):
        original = rows[dup["dup_of"]]
        assert _words(dup["context"], dup["question"]) != _words(
            original["context"], original["question"]
        )
        similarities.append(
            _jaccard(
                _shingles(dup["context"], dup["question"]),
                _shingles(original["context"], original["question"]),
            )
        )
    assert len(similarities) > 1_000
    assert min(similarities) >= 0.8
    # The generator aims at >= 0.85 so MinHash LSH finds nearly all of them.
    assert sum(s >= 0.85 for s in similarities) / len(similarities) >= 0.99
    assert sum(s < 0.95 for s in similarities) / len(similarities) > 0.3  # real edits, not trivia


def test_originals_are_neither_exact_nor_near_duplicates_of_each_other(
    corpus: pl.DataFrame,
) -> None:
    originals = corpus.filter(pl.col("dup_kind").is_null()).head(8_000)
    texts = list(zip(originals["context"], originals["question"], strict=True))
    normalized = [" ".join(_words(c, q)) for c, q in texts]
    assert len(set(normalized)) == len(normalized)
    shingles = [_shingles(c, q) for c, q in texts]
    # The riskiest pairs: same user (shared persona), same question (different users) ...
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (user, question) in enumerate(
        zip(originals["user_id"], originals["question"], strict=True)
    ):
        groups["u" + user].append(i)
        groups["q" + question].append(i)
    pairs = [(a, b) for members in groups.values() for a in members for b in members if a < b]
    # ... and a random sample of all pairs.
    rng = random.Random(0)
    pairs += [tuple(rng.sample(range(len(texts)), 2)) for _ in range(3_000)]
    assert len(pairs) > 20_000
    worst = max(_jaccard(shingles[a], shingles[b]) for a, b in pairs)
    assert worst < 0.8


# --- content -----------------------------------------------------------------------------------


def test_questions_are_shared_across_users_at_a_controllable_rate() -> None:
    def shared_share(rate: float) -> tuple[float, int]:
        frame = synth_frame(
            rows=6_000, seed=4, shared_question_rate=rate, exact_dup_rate=0.0, near_dup_rate=0.0
        )
        users = frame.group_by("question").agg(pl.col("user_id").n_unique().alias("n"))
        share = users.filter(pl.col("n") >= 3)["n"].sum() / frame.height
        return share, users.filter(pl.col("n") >= 5).height

    low, _ = shared_share(0.0)
    mid, popular = shared_share(0.3)
    high, _ = shared_share(0.6)
    assert low < 0.05  # user-specific questions rarely coincide by chance
    assert 0.2 < mid < 0.4 and 0.5 < high < 0.7
    assert popular >= 20


def test_rows_have_realistic_lengths_and_distinct_questions_per_user(corpus: pl.DataFrame) -> None:
    originals = corpus.filter(pl.col("dup_kind").is_null())
    context_words = originals["context"].str.split(" ").list.len()
    question_words = originals["question"].str.split(" ").list.len()
    assert context_words.min() >= 20 and context_words.max() <= 80
    assert 28 <= context_words.mean() <= 50
    assert question_words.min() >= 6 and question_words.max() <= 40
    assert question_words.quantile(0.05) >= 9
    per_user = originals.group_by("user_id").agg(
        pl.len().alias("rows"), pl.col("question").n_unique().alias("questions")
    )
    assert (per_user["rows"] == per_user["questions"]).all()
    assert per_user["rows"].max() > 1


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"exact_dup_rate": 1.5}, "--exact-dup-rate"),
        ({"near_dup_rate": -0.1}, "--near-dup-rate"),
        ({"shared_question_rate": 1.0}, "--shared-question-rate"),
        ({"exact_dup_rate": 0.5, "near_dup_rate": 0.5}, "<= 0.9"),
        ({"rows": 0}, "--rows"),
        ({"seed": -1}, "--seed"),
        ({"rows": 1_000, "users": 10}, "--users >= 34"),
    ],
)
def test_bad_config_is_rejected_naming_the_option(overrides: dict[str, float], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")) as error:
        SynthConfig(**overrides)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def frames():  # type: ignore[no-untyped-def]
        yield synth_frame(rows=10)
        raise RuntimeError("disk on fire")

    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_frames(frames(), target)
    assert list(tmp_path.iterdir()) == []
    target.write_text("keep me")
    with pytest.raises(OutputError, match="--overwrite"):
        write_frames(iter([synth_frame(rows=10)]), target)
    assert target.read_text() == "keep me"


# --- held-out eval prompts -------------------------------------------------------------------


def test_eval_prompts_share_questions_and_are_disjoint_from_training() -> None:
    held_out = synth_eval(200, seed=11, users_per_question=4)
    assert held_out.height == 200
    assert held_out.equals(synth_eval(200, seed=11, users_per_question=4))
    groups = held_out.group_by("question_id").agg(
        pl.col("question").n_unique().alias("texts"),
        pl.col("user_id").n_unique().alias("users"),
        pl.col("context").n_unique().alias("contexts"),
    )
    assert (groups["texts"] == 1).all()
    assert (groups["users"] == 4).all() and (groups["contexts"] == 4).all()
    training_questions = set()
    for seed in (0, 11):
        training_questions |= set(synth_frame(rows=20_000, seed=seed)["question"].to_list())
    assert not set(held_out["question"]) & training_questions
    with pytest.raises(ConfigError, match="users_per_question"):
        synth_eval(5_000, seed=0, users_per_question=2)


# --- the bundled sample corpus ---------------------------------------------------------------


def test_sample_corpus_is_a_small_personalization_corpus() -> None:
    sample = pl.read_ndjson(SAMPLE_CORPUS_PATH)
    assert sample.columns == ["id", "user_id", "context", "question"]
    assert load_sample_corpus().equals(sample)
    assert 250 <= sample.height <= 400
    assert sample["id"].is_unique().all()
    assert sample.null_count().sum_horizontal().item() == 0
    assert 40 <= sample["user_id"].n_unique() <= 60
    assert sample.group_by("user_id").len()["len"].min() >= 3
    normalized = [
        " ".join(_words(c, q)) for c, q in zip(sample["context"], sample["question"], strict=True)
    ]
    assert len(set(normalized)) == len(normalized)
    users_per_question = sample.group_by("question").agg(pl.col("user_id").n_unique().alias("n"))
    assert users_per_question.filter(pl.col("n") >= 3).height >= 15
    # One context per user; questions answerable in a short paragraph.
    assert (sample.group_by("user_id").agg(pl.col("context").n_unique())["context"] == 1).all()
    assert sample["question"].str.split(" ").list.len().max() <= 25


def test_sample_corpus_has_no_near_duplicates() -> None:
    # The demo dedups the sample corpus; no row may disappear as a near duplicate.
    sample = load_sample_corpus()
    shingles = [_shingles(c, q) for c, q in zip(sample["context"], sample["question"], strict=True)]
    worst = max(
        _jaccard(shingles[a], shingles[b])
        for a in range(len(shingles))
        for b in range(a + 1, len(shingles))
    )
    # A user's rows share their context, so short questions bring them to ~0.75 - below 0.8.
    assert worst < 0.78


# --- the command line ------------------------------------------------------------------------


def test_cli_writes_a_corpus_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "corpus.parquet"
    args = ["synth", "--rows", "800", "--seed", "3", "-o", str(target)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote 800 rows" in result.stdout
    assert pl.read_parquet(target).equals(synth_frame(rows=800, seed=3))
    before = target.read_bytes()

    again = runner.invoke(cli, args)
    assert again.exit_code != 0
    assert again.stderr.strip().count("\n") == 0
    assert again.stderr.startswith("error:") and "--overwrite" in again.stderr
    assert target.read_bytes() == before

    replaced = runner.invoke(cli, [*args[:4], "4", "-o", str(target), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert target.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.parquet"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--near-dup-rate", "1.5"], "--near-dup-rate"),
        (["--exact-dup-rate", "-0.2"], "-0.2"),
        (["--users", "1"], "--users"),
    ],
)
def test_cli_rejects_bad_options_without_output(
    tmp_path: Path, extra: list[str], needle: str
) -> None:
    target = tmp_path / "corpus.jsonl"
    result = CliRunner().invoke(cli, ["synth", "--rows", "100", "-o", str(target), *extra])
    assert result.exit_code != 0
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message and needle in message
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_an_unknown_extension_and_writes_eval_prompts(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["synth", "--rows", "10", "-o", str(tmp_path / "corpus.txt")])
    assert bad.exit_code != 0 and "--format" in bad.stderr
    assert list(tmp_path.iterdir()) == []

    as_csv = runner.invoke(
        cli, ["synth", "--rows", "50", "-o", str(tmp_path / "corpus.txt"), "--format", "csv"]
    )
    assert as_csv.exit_code == 0, as_csv.output
    assert pl.read_csv(tmp_path / "corpus.txt").height == 50

    held_out = tmp_path / "eval.parquet"
    result = runner.invoke(cli, ["synth", "--eval", "--rows", "40", "-o", str(held_out)])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(held_out).equals(synth_eval(40, 0))
