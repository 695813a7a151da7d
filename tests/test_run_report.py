"""mipo.run.report, directly: round_metrics reads the round folders the stages write (eval
metrics.json and per-prompt Parquet, pairs stats.json, train_config.json, train_log.jsonl) and
pairs each round with the one before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mipo.errors import OutputError
from mipo.evaluate.stats import paired_bootstrap_ci
from mipo.run.report import EVAL_NAME, round_metrics

IDS = [f"p{i}" for i in range(8)]
USERS = ["u0", "u0", "u1", "u1", "u2", "u2", "u3", "u3"]
QUESTIONS = [f"q{i}" for i in range(8)]


def write_round(
    out: Path,
    number: int,
    *,
    model_pmi: list[float],
    baseline_pmi: list[float],
    losses: list[float] | None = None,
    personalization: dict[str, Any] | None = None,
    ids: list[str] = IDS,
) -> None:
    """One round's folder as `mipo run` leaves it (the files round_metrics reads)."""
    folder = out / f"round-{number}"
    (folder / "eval").mkdir(parents=True)
    (folder / "pairs").mkdir()
    (folder / "model").mkdir()
    pl.DataFrame(
        {
            "id": ids,
            "user_id": USERS,
            "question": QUESTIONS,
            "pmi_same_question_model": model_pmi,
            "pmi_same_question_baseline": baseline_pmi,
        }
    ).write_parquet(folder / "eval" / f"pmi_{EVAL_NAME}.parquet")
    difference = {"mean": 1.0, "low": 0.5, "high": 1.5, "n": 8}
    metrics = {
        "pmi": {
            EVAL_NAME: {
                "model": {"pmi_same_question": {"mean": sum(model_pmi) / 8}},
                "baseline": {"pmi_same_question": {"mean": sum(baseline_pmi) / 8}},
                "difference": {"pmi_same_question": difference},
                "findings": [f"finding of round {number}"],
            }
        },
        "multiple_choice": {"arc": {"difference": {"accuracy": {"mean": -0.2, "high": -0.1}}}},
        "personalization": personalization,
    }
    (folder / "eval" / "metrics.json").write_text(json.dumps(metrics))
    stats = {"pairs": {"pairs_written": 10 * number}, "generate": {"new_tokens": 500}}
    (folder / "pairs" / "stats.json").write_text(json.dumps(stats))
    record = {"num_pairs": 10 * number, "resolved": {"global_steps": 3, "learning_rate": 5e-7}}
    (folder / "model" / "train_config.json").write_text(json.dumps(record))
    if losses is not None:
        lines = [
            json.dumps({"step": i, "loss": loss, "rewards/accuracies": 0.5 + 0.25 * i})
            for i, loss in enumerate(losses)
        ]
        lines.insert(1, json.dumps({"step": 0, "eval_runtime": 1.0}))  # not a training step
        (folder / "model" / "train_log.jsonl").write_text("\n".join(lines) + "\n")


BASE = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
ROUND1 = [v + 1.0 for v in BASE]
ROUND2 = [v + 3.0 for v in BASE[:4]] + [v + 1.0 for v in BASE[4:]]


def test_rounds_stop_at_the_first_unfinished_one(tmp_path: Path) -> None:
    write_round(tmp_path, 1, model_pmi=ROUND1, baseline_pmi=BASE, losses=[0.69, 0.60, 0.50])
    write_round(tmp_path, 3, model_pmi=ROUND2, baseline_pmi=BASE)  # round 2 never finished
    rounds = round_metrics(tmp_path, 3, n_bootstrap=200, seed=0)
    assert [r["round"] for r in rounds] == [1]
    assert round_metrics(tmp_path / "nothing", 2, n_bootstrap=200, seed=0) == []


def test_a_round_reads_its_stages_records(tmp_path: Path) -> None:
    write_round(tmp_path, 1, model_pmi=ROUND1, baseline_pmi=BASE, losses=[0.69, 0.60, 0.50])
    (entry,) = round_metrics(tmp_path, 1, n_bootstrap=200, seed=0)
    assert entry["pairs"] == {"written": 10, "generated_tokens": 500, "prompts_planned": None}
    train = entry["train"]
    assert (train["pairs"], train["steps"], train["learning_rate"]) == (10, 3, 5e-7)
    assert (train["first_loss"], train["final_loss"]) == (0.69, 0.50)
    assert train["mean_reward_accuracy"] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert entry["pmi"]["pmi_same_question"]["mean"] == pytest.approx(4.5)
    assert entry["base_pmi"]["pmi_same_question"]["mean"] == pytest.approx(3.5)
    assert entry["findings"] == ["finding of round 1"]
    assert entry["accuracy"] == {"arc": {"difference": {"accuracy": {"mean": -0.2, "high": -0.1}}}}
    assert entry["eval_report"] == "round-1/eval/report.md"
    assert "reader_criteria" not in entry  # no personalization headline: nothing to judge


def test_the_first_round_is_paired_with_the_base_and_later_ones_with_the_round_before(
    tmp_path: Path,
) -> None:
    write_round(tmp_path, 1, model_pmi=ROUND1, baseline_pmi=BASE)
    write_round(tmp_path, 2, model_pmi=ROUND2, baseline_pmi=BASE)
    first, second = round_metrics(tmp_path, 2, n_bootstrap=300, seed=4)
    # Round 1 against the base: +1 on every prompt, so the interval is exactly [1, 1].
    vs_base = first["vs_previous"]["pmi_same_question"]
    assert (vs_base["mean"], vs_base["low"], vs_base["high"]) == pytest.approx((1.0, 1.0, 1.0))
    # Round 2 against round 1's model (not the base): +2 on users u0 and u1, 0 on u2 and u3,
    # resampled by user as the evaluation's own intervals are.
    vs_previous = second["vs_previous"]["pmi_same_question"]
    expected = paired_bootstrap_ci(
        ROUND2, ROUND1, clusters=USERS, crossed=None, n_resamples=300, seed=4
    )
    assert vs_previous == expected
    assert vs_previous["mean"] == pytest.approx(1.0)
    assert vs_previous["low"] < 1.0 < vs_previous["high"]
    assert vs_previous["clusters"] == 4


def test_rounds_evaluated_on_other_prompts_are_refused(tmp_path: Path) -> None:
    write_round(tmp_path, 1, model_pmi=ROUND1, baseline_pmi=BASE)
    write_round(tmp_path, 2, model_pmi=ROUND2, baseline_pmi=BASE, ids=[*IDS[:7], "other"])
    with pytest.raises(OutputError, match="different held-out prompts"):
        round_metrics(tmp_path, 2, n_bootstrap=200, seed=0)


def test_a_personalization_headline_is_judged_against_the_readers_bar(tmp_path: Path) -> None:
    above = {"mean": 1.5, "low": 1.0, "high": 2.0, "n": 8}
    headline = {
        "gain": above,
        "adjusted_gain": {"all": above},
        "logprob_per_token_change": {"mean": -0.05},
        "persona_change": {"mean": 0.2},  # the model speaks as the user far more often
    }
    write_round(tmp_path, 1, model_pmi=ROUND1, baseline_pmi=BASE, personalization=headline)
    (entry,) = round_metrics(tmp_path, 1, n_bootstrap=200, seed=0)
    unmet = [name for name, met in entry["reader_criteria"].items() if not met]
    # The multiple-choice accuracy fell (interval below 0) and persona adoption rose.
    assert unmet == ["persona adoption <= baseline + 0.05", "no accuracy lost"]
