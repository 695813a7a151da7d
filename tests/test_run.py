"""`mipo run` end to end on the tiny local model (split, build-pairs, train, eval, report, resume,
a second round) and its errors; one slow run of the demo configuration, shrunk, on SmolLM2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from mipo.cli import cli
from mipo.corpus import open_corpus
from mipo.errors import ConfigError, CorpusError
from mipo.run import RunConfig, split_corpus
from mipo.run.pipeline import AUTO_NEGATIVES, resolve_negatives
from mipo.synth import SAMPLE_CORPUS_PATH, load_sample_corpus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_args(tiny_model_dir: Path) -> list[str]:
    """Sizes that keep a whole round to seconds on the tiny model (it never stops: keep
    truncated pairs)."""
    return [
        "--model", str(tiny_model_dir), "--set", "generation.backend=hf",
        "--set", "eval_generation.backend=hf", "--generation-max-new-tokens", "8",
        "--set", "eval_generation.max_new_tokens=8", "--keep-truncated",
        "--generation-batch-size", "8", "--lora", "--max-steps", "2", "--train-batch-size", "2",
        "--lr", "1e-3", "-k", "2", "--set", f"judge={tiny_model_dir}", "--set", "n_bootstrap=200",
        "--eval-batch-size", "8", "--eval-fraction", "0.25", "--max-prompts", "16",
        "--set", "progress=false",
    ]  # fmt: skip


def _invoke(*args: str | Path) -> object:
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def _ok(result: object) -> None:
    assert result.exit_code == 0, (result.output, result.exception)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first eight users of the sample corpus (a few dozen rows)."""
    frame = load_sample_corpus()
    users = frame["user_id"].unique(maintain_order=True)[:8].to_list()
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    frame.filter(pl.col("user_id").is_in(users)).write_ndjson(path)
    return path


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, small_corpus: Path, tiny_model_dir: Path
) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "out"
    result = _invoke(small_corpus, "-o", out, *_tiny_args(tiny_model_dir))
    _ok(result)
    return out, result.output  # type: ignore[attr-defined]


def test_run_writes_report_metrics_and_plots(finished_run: tuple[Path, str]) -> None:
    out, output = finished_run
    assert f"report: {out / 'report.md'}" in output
    for name in ("report.md", "report.html", "metrics.json", "rounds.png", "run.json"):
        assert (out / name).is_file(), name
    assert (out / "rounds.png").read_bytes()[:8] == PNG_MAGIC
    for png in ("pmi_eval.png", "training.png"):
        assert (out / "round-1" / "eval" / png).read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "| metric | base | round 1 |" in report and "round 2" not in report
    assert "![held-out PMI and judged win rate across rounds](rounds.png)" in report
    assert '<img src="rounds.png"' in (out / "report.html").read_text()
    # Persona adoption beside the other controls, and the last round's seeded examples.
    assert "persona adoption − base (paired)" in report
    assert "## Examples — round 1 vs base" in report
    # The reader's bar for a default, judged from the numbers and said in the summary.
    criteria = json.loads((out / "metrics.json").read_text())["rounds"][0]["reader_criteria"]
    assert len(criteria) == 5 and all(isinstance(v, bool) for v in criteria.values())
    verdict = "all criteria met" if all(criteria.values()) else "misses "
    assert "would a reader call it personal? persona adoption" in output and verdict in output
    evaluation = json.loads((out / "round-1" / "eval" / "metrics.json").read_text())
    assert evaluation["context_format"] == "user-turn"  # the run's prompts, passed to eval
    assert len(evaluation["pmi"]["eval"]["examples"]) == min(
        4, evaluation["pmi"]["eval"]["model"]["persona"]["n"]
    )

    # The split: whole users on one side, nothing trained on is evaluated.
    train = pl.read_parquet(out / "data" / "train.parquet")
    held = pl.read_parquet(out / "data" / "eval.parquet")
    assert not set(train["user_id"]) & set(held["user_id"])
    assert not set(train["id"]) & set(held["id"])
    assert train.height == 16 and held.height >= 2

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"]["held_out_by"] == "users"
    assert metrics["split"]["eval_prompts"] == held.height
    (round1,) = metrics["rounds"]
    assert round1["round"] == 1
    pmi, base = round1["pmi"]["pmi_random"], metrics["base"]["pmi"]["pmi_random"]
    for stat in (pmi, base):
        assert stat["n"] == held.height and stat["low"] <= stat["mean"] <= stat["high"]
        assert all(math.isfinite(stat[k]) for k in ("mean", "low", "high"))
    difference = round1["vs_base"]["pmi_random"]
    assert difference["mean"] == pytest.approx(pmi["mean"] - base["mean"], abs=1e-6)
    assert "p_greater" not in difference
    same = round1["vs_base"]["pmi_same_question"]
    assert same["n"] == held.height and same["units"].startswith("users")
    assert metrics["personalization"]["gain"] == same
    assert round1["judge"]["wins"] + round1["judge"]["ties"] + round1["judge"]["losses"] == (
        held.height
    )
    # A judge that scores every response alike is called out (its win rate is all ties).
    single = round1["judge"]["single_score"]
    assert (single is not None) == ("gave every response the same score" in report)
    assert single is None or round1["judge"]["ties"] == held.height
    # Pairs really came from build-pairs and training really ran on them.
    pairs = pl.read_parquet(out / "round-1" / "pairs" / "pairs.parquet")
    assert round1["pairs"]["written"] == pairs.height > 0
    assert round1["train"]["pairs"] == pairs.height and round1["train"]["steps"] == 2
    record = json.loads((out / "round-1" / "model" / "train_config.json").read_text())
    assert record["status"] == "complete" and record["options"]["lora"] is True
    assert set(metrics["stage_seconds"]) >= {
        "split", "round-1/pairs", "round-1/train", "round-1/eval"
    }  # fmt: skip


def _stamps(out: Path) -> dict[str, int]:
    files = [
        "data/train.parquet",
        "round-1/pairs/pairs.parquet",
        "round-1/model/train_config.json",
        "round-1/model/model/adapter_config.json",
        "round-1/eval/metrics.json",
    ]
    return {name: (out / name).stat().st_mtime_ns for name in files}


def test_rerun_skips_finished_stages(
    finished_run: tuple[Path, str], small_corpus: Path, tiny_model_dir: Path
) -> None:
    out, _ = finished_run
    before = _stamps(out)
    result = CliRunner().invoke(cli, ["run", str(small_corpus), "-o", str(out),
                                      *_tiny_args(tiny_model_dir)])  # fmt: skip
    _ok(result)
    for stage in ("pairs", "train", "eval"):
        assert f"round 1/1: {stage} already done, skipping" in result.output
    assert _stamps(out) == before


def test_second_round_builds_on_the_first(
    finished_run: tuple[Path, str], small_corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished_run[0], out)
    before = _stamps(out)
    _ok(_invoke(small_corpus, "-o", out, *_tiny_args(tiny_model_dir), "--rounds", "2"))
    assert _stamps(out) == before  # round 1 was kept as it was

    merged = out / "round-1" / "model" / "merged"
    assert (merged / "config.json").is_file()
    # Round 2 generated its pairs with round 1's model and trained from it.
    pairs_run = json.loads((out / "round-2" / "pairs" / "run.json").read_text())
    assert Path(pairs_run["model"]["name"]).resolve() == merged.resolve()
    trained = json.loads((out / "round-2" / "model" / "train_config.json").read_text())
    assert Path(trained["resolved"]["model"]).resolve() == merged.resolve()

    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    previous = metrics["rounds"][1]["vs_previous"]["pmi_random"]
    first, second = (r["pmi"]["pmi_random"]["mean"] for r in metrics["rounds"])
    assert previous["mean"] == pytest.approx(second - first, abs=1e-6)
    # Both rounds are scored under the base model: the base column is the same in both.
    evals = [json.loads((out / f"round-{r}/eval/metrics.json").read_text()) for r in (1, 2)]
    assert evals[0]["pmi"]["eval"]["baseline"] == evals[1]["pmi"]["eval"]["baseline"]
    report = (out / "report.md").read_text()
    assert "| metric | base | round 1 | round 2 |" in report
    assert "PMI random − previous round (paired)" in report


def test_changed_options_are_refused(
    finished_run: tuple[Path, str], small_corpus: Path, tiny_model_dir: Path
) -> None:
    out, _ = finished_run
    result = _invoke(small_corpus, "-o", out, *_tiny_args(tiny_model_dir), "--beta", "0.5")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "other options" in result.output and "--overwrite" in result.output  # type: ignore[attr-defined]


def test_reused_pairs_are_checked_and_copied(
    finished_run: tuple[Path, str], small_corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = finished_run[0] / "round-1" / "pairs"
    # Other training options: the pairs are copied, not generated, and trained on.
    out = tmp_path / "beta"
    args = (small_corpus, "-o", out, *_tiny_args(tiny_model_dir), "--set", f"reuse_pairs={source}")
    result = _invoke(*args, "--beta", "0.5")
    _ok(result)
    assert "round 1/1: reusing the pairs of" in result.output  # type: ignore[attr-defined]
    copied = pl.read_parquet(out / "round-1" / "pairs" / "pairs.parquet")
    assert copied.equals(pl.read_parquet(source / "pairs.parquet"))
    assert not (out / "round-1" / "pairs" / "generations" / ".lock-shard-0-of-1").exists()
    record = json.loads((out / "round-1" / "model" / "train_config.json").read_text())
    assert record["status"] == "complete" and record["options"]["beta"] == 0.5
    assert record["num_pairs"] == copied.height
    # Other generation options: build-pairs refuses the copy, and nothing of it stays behind.
    out = tmp_path / "hot"
    args = (small_corpus, "-o", out, *_tiny_args(tiny_model_dir), "--set", f"reuse_pairs={source}")
    result = _invoke(*args, "--set", "generation.temperature=0.7")
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert "different generate options" in result.output  # type: ignore[attr-defined]
    assert not (out / "round-1" / "pairs").exists()
    assert not (out / "round-1" / ".pairs.reused.tmp").exists()


def test_corrupt_records_fail_closed(
    finished_run: tuple[Path, str], small_corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A damaged train_config.json is an error naming it, never "not trained yet" (a silent
    retrain); a damaged run.json is refused unless --overwrite."""
    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    record = out / "round-1" / "model" / "train_config.json"
    record.write_text('{"status": "compl')
    result = _invoke(small_corpus, "-o", out, *_tiny_args(tiny_model_dir))
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    output = " ".join(result.output.split())  # type: ignore[attr-defined]
    assert "training record" in output and "train_config.json" in output
    assert "is not valid JSON" in output and "to train this round again" in output
    assert record.read_text() == '{"status": "compl'  # nothing was retrained

    (out / "run.json").write_text("[]")
    result = _invoke(small_corpus, "-o", out, *_tiny_args(tiny_model_dir))
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert "is not a JSON object" in result.output  # type: ignore[attr-defined]


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.1"])
def test_bad_eval_fraction(fraction: str, small_corpus: Path, tmp_path: Path) -> None:
    result = _invoke(small_corpus, "-o", tmp_path / "out", "--eval-fraction", fraction)
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "eval_fraction (--eval-fraction) must be in (0, 1)" in result.output  # type: ignore[attr-defined]
    assert not (tmp_path / "out").exists()


def test_corpus_too_small_to_hold_out(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = load_sample_corpus().head(3)
    one_user = tmp_path / "one_user.jsonl"
    rows.with_columns(pl.lit("u").alias("user_id")).write_ndjson(one_user)
    no_users = tmp_path / "three_rows.jsonl"
    rows.drop("user_id").write_ndjson(no_users)
    for corpus, words in ((one_user, "1 users"), (no_users, "3 prompts")):
        out = tmp_path / f"out-{corpus.stem}"
        result = _invoke(corpus, "-o", out, "--model", tiny_model_dir)
        assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
        assert "too few to hold out" in result.output and words in result.output  # type: ignore[attr-defined]
        assert not out.exists()  # nothing half-written


def test_other_errors(small_corpus: Path, tmp_path: Path) -> None:
    result = _invoke("-o", tmp_path / "out")
    assert result.exit_code == 2 and "missing CORPUS" in result.output  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="rounds"):
        RunConfig(str(small_corpus), tmp_path, rounds=0)
    with pytest.raises(ConfigError, match="max_prompts"):
        RunConfig(str(small_corpus), tmp_path, max_prompts=1)
    with pytest.raises(ConfigError, match="negatives"):
        RunConfig(str(small_corpus), tmp_path, negatives="nope")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    result = _invoke(small_corpus, "-o", occupied)
    assert result.exit_code == 2 and "holds no mipo run" in result.output  # type: ignore[attr-defined]
    assert (occupied / "notes.txt").read_text() == "mine"


def test_auto_negatives_follow_the_corpus(small_corpus: Path, tmp_path: Path) -> None:
    """``auto`` (the default) is context-swap where some prompt has a user context, else
    random: a corpus without a context column, or with blank contexts, cannot swap them."""
    assert RunConfig(str(small_corpus), tmp_path).negatives == AUTO_NEGATIVES
    frame = pl.read_ndjson(small_corpus)
    blank = tmp_path / "blank.jsonl"
    frame.with_columns(pl.lit("  ").alias("context")).write_ndjson(blank)
    bare = tmp_path / "bare.jsonl"
    frame.drop("context").write_ndjson(bare)
    chosen = {
        path.name: resolve_negatives(RunConfig(str(path), tmp_path), open_corpus(path)).negatives
        for path in (small_corpus, blank, bare)
    }
    assert chosen == {
        "corpus.jsonl": "context-swap",
        "blank.jsonl": "random",
        "bare.jsonl": "random",
    }
    # An explicit strategy is kept as given (canonical form), never replaced.
    assert RunConfig(str(bare), tmp_path, negatives="both").negatives == "random,context-drop"


def test_split_is_deterministic_and_keeps_users_whole() -> None:
    frame = load_sample_corpus()
    first = split_corpus(frame, "user_id", 0.2, seed=3)
    again = split_corpus(frame, "user_id", 0.2, seed=3)
    other = split_corpus(frame, "user_id", 0.2, seed=4)
    assert first[1].equals(again[1]) and not first[1].equals(other[1])
    train, held = first
    assert train.height + held.height == frame.height
    assert held.height >= math.ceil(0.2 * frame.height)
    assert not set(train["user_id"]) & set(held["user_id"])
    # Without a user column: rows.
    train, held = split_corpus(frame.drop("user_id"), None, 0.25, seed=0)
    assert held.height == math.ceil(0.25 * frame.height)
    with pytest.raises(CorpusError, match="too few"):
        split_corpus(frame.head(3), None, 0.5, seed=0)


@pytest.mark.slow
def test_demo_configuration_on_the_builtin_model(tmp_path: Path, smollm2_dir: Path) -> None:
    """`mipo run --demo`, shrunk: the real model through every stage."""
    out = tmp_path / "demo"
    result = _invoke(
        "--demo", "-o", out, "--max-prompts", "12", "--set", "max_eval_prompts=8",
        "--generation-max-new-tokens", "24", "--set", "eval_generation.max_new_tokens=24",
        "--max-steps", "3", "-k", "1", "--set", "n_bootstrap=200",
        "--set", "generation.backend=hf", "--set", "eval_generation.backend=hf",
        "--set", "progress=false",
    )  # fmt: skip
    _ok(result)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"]["corpus"] == str(SAMPLE_CORPUS_PATH)
    (round1,) = metrics["rounds"]
    assert round1["pmi"]["pmi_random"]["n"] == 8
    assert math.isfinite(round1["vs_base"]["pmi_random"]["mean"])
    # The demo trains on context-swap negatives, asks for no judge (the built-in model ties
    # every pair) and reports the same-question gain as its headline.
    assert metrics["options"]["negatives"] == "context-swap"
    assert metrics["options"]["drop_persona"] is True
    assert metrics["options"]["columns"]["context_format"] == "user-turn"
    assert round1["judge"] is None
    headline = metrics["personalization"]
    assert headline["contrast"] == "same_question" and headline["estimator"] == "log-mean-exp"
    assert headline["gain"]["n"] == 8 and math.isfinite(headline["gain"]["mean"])
    assert "personalization: same-question PMI gain" in result.output
    rows = pl.read_parquet(out / "round-1" / "eval" / "pmi_eval.parquet")
    # A real instruct model answers in words, and differently for different prompts.
    texts = rows["response_model"].to_list()
    assert all(len(t.split()) >= 3 for t in texts) and len(set(texts)) >= 4
