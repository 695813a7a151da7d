"""mipo.evaluate.sections, directly: each report section's statistics and what it writes into
the report, from per-row results over the bundled evaluation files (the sample corpus as a pmi
file, the multiple-choice and math samples)."""

from __future__ import annotations

import importlib.resources
import json
import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mipo.evaluate.config import EvalConfig
from mipo.evaluate.datasets import EvalDataset, load_dataset
from mipo.evaluate.report import Report
from mipo.evaluate.sections import (
    EXAMPLES_SHOWN,
    ReportSections,
    personalization_headline,
    reader_criteria,
)
from mipo.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from mipo.synth import SAMPLE_CORPUS_PATH

EVAL_DATA = importlib.resources.files("mipo") / "data" / "eval"
ROLES = {"model": "tuned", "baseline": "base"}
N_BOOTSTRAP = 200


def sections(tmp_path: Path, *, roles: dict[str, str] = ROLES, **config: Any) -> ReportSections:
    eval_config = EvalConfig(model=str(tmp_path / "model"), data=["x"], n_bootstrap=N_BOOTSTRAP,
                             k=4, **config)  # fmt: skip
    return ReportSections(eval_config, roles, tmp_path, notes=[], shots=8)


def pmi_rows(ds: EvalDataset, *, persona_model: float) -> pl.DataFrame:
    """Per-row results as the runner writes them for a pmi file: the tuned model's
    same-question PMI is the baseline's + 2 on every row, its random PMI + 0, and it speaks as
    the user on a share ``persona_model`` of its rows (the baseline never does)."""
    rng = random.Random(0)
    n = ds.frame.height
    columns: dict[str, Any] = {
        name: ds.frame[name] for name in ("id", "user_id", "question", "context")
    }
    base = [rng.gauss(1.0, 1.0) for _ in range(n)]
    for role, shift, persona in (("baseline", 0.0, 0.0), ("model", 2.0, persona_model)):
        columns[f"response_{role}"] = [f"{role} answer {i}" for i in range(n)]
        columns[f"num_tokens_{role}"] = [rng.randint(20, 60) for _ in range(n)]
        columns[f"logprob_{role}"] = [-0.5 * t for t in columns[f"num_tokens_{role}"]]
        columns[f"copy_share_{role}"] = [rng.random() * 0.1 for _ in range(n)]
        columns[f"context_words_{role}"] = [rng.random() * 0.3 for _ in range(n)]
        columns[f"persona_{role}"] = [float(i < persona * n) for i in range(n)]
        for kind, gain in (("random", 0.0), ("same_question", shift)):
            pmi = [b + gain for b in base]
            columns[f"pmi_{kind}_{role}"] = pmi
            columns[f"pmi_{kind}_infonce_{role}"] = [min(v, 1.6) for v in pmi]
            columns[f"pmi_{kind}_mean_log_{role}"] = [v + 0.3 for v in pmi]
            # 3 rows found no other user asking their question; 2 found only one.
            columns[f"num_contrasts_{kind}_{role}"] = [0] * 3 + [1] * 2 + [4] * (n - 5)
    return pl.DataFrame(columns)


@pytest.fixture(scope="module")
def pmi_dataset() -> EvalDataset:
    return load_dataset(f"pmi:{SAMPLE_CORPUS_PATH}", limit=40)


def test_the_pmi_section_measures_the_paired_gain(pmi_dataset: EvalDataset, tmp_path: Path) -> None:
    frame = pmi_rows(pmi_dataset, persona_model=0.0)
    report, plots = Report("t"), []
    stats = sections(tmp_path).pmi(pmi_dataset, frame, report, plots)

    clusters = {"clusters": frame["user_id"].to_list(), "crossed": frame["question"].to_list()}
    gain = stats["difference"]["pmi_same_question"]
    assert gain == paired_bootstrap_ci(
        frame["pmi_same_question_model"].to_list(),
        frame["pmi_same_question_baseline"].to_list(),
        n_resamples=N_BOOTSTRAP, seed=0, **clusters,
    )  # fmt: skip
    assert gain["mean"] == pytest.approx(2.0) and gain["low"] == pytest.approx(2.0)
    assert stats["difference"]["pmi_random"]["mean"] == pytest.approx(0.0)
    # Per-token values are derived: logprob / tokens is -0.5 on every row.
    assert stats["model"]["logprob_per_token"]["mean"] == pytest.approx(-0.5)
    assert stats["resampling"] == {
        "units": "users and questions", "users": 6, "questions": 32, "n_resamples": N_BOOTSTRAP,
    }  # fmt: skip
    same = stats["contrasts"]["same_question"]
    assert same == {"fewer_than_wanted": 2, "none": 3, "wanted": 4}
    # The gain is checked against each shortcut; nothing here explains it.
    control = stats["controls"]["same_question"]
    assert control["checked"] and control["explained_by"] == []
    assert any("same question, other users: PMI rose by" in f for f in stats["findings"])
    assert any(f.startswith("random: no detectable change") for f in stats["findings"])
    assert len(stats["examples"]) == EXAMPLES_SHOWN
    assert plots == [f"pmi_{pmi_dataset.name}.png"] and (tmp_path / plots[0]).stat().st_size > 0
    markdown = report.to_markdown()
    assert f"Pointwise mutual information — {pmi_dataset.name} (40 prompts, 6 users)" in markdown
    assert "same question, other users: 2 with fewer than 4, 3 with none" in markdown


def test_persona_adoption_is_a_finding_and_fails_the_readers_bar(
    pmi_dataset: EvalDataset, tmp_path: Path
) -> None:
    frame = pmi_rows(pmi_dataset, persona_model=0.5)
    stats = sections(tmp_path).pmi(pmi_dataset, frame, Report("t"), [])
    assert stats["difference"]["persona"]["mean"] == pytest.approx(0.5)
    assert any("speaks as the user" in f for f in stats["findings"])
    headline = personalization_headline({pmi_dataset.name: stats}, k=4)
    assert headline is not None and headline["dataset"] == pmi_dataset.name
    assert headline["gain"] == stats["difference"]["pmi_same_question"]
    assert headline["gain_above_zero"] and headline["persona_change"]["mean"] == 0.5
    unmet = [name for name, met in reader_criteria(headline).items() if not met]
    assert "persona adoption <= baseline + 0.05" in unmet


def test_without_a_baseline_there_is_no_difference_and_no_headline(
    pmi_dataset: EvalDataset, tmp_path: Path
) -> None:
    frame = pmi_rows(pmi_dataset, persona_model=0.0)
    report = Report("t")
    stats = sections(tmp_path, roles={"model": "tuned"}).pmi(pmi_dataset, frame, report, [])
    assert "difference" not in stats and "findings" not in stats and "examples" not in stats
    assert personalization_headline({pmi_dataset.name: stats}, k=4) is None
    markdown = report.to_markdown()
    assert "| metric | model |\n" in markdown and "(paired) |" not in markdown


def test_the_choice_section_counts_correct_answers(tmp_path: Path) -> None:
    ds = load_dataset(f"choice:{EVAL_DATA / 'choice_sample.jsonl'}")
    n = ds.frame.height
    frame = pl.DataFrame(
        {
            "correct_model": [i % 4 != 0 for i in range(n)],  # 15 of 20
            "correct_baseline": [i % 2 == 0 for i in range(n)],  # 10 of 20
            "correct_norm_model": [True] * n,
            "correct_norm_baseline": [False] * n,
        }
    )
    report = Report("t")
    stats = sections(tmp_path).accuracy(ds, frame, report)
    assert stats["model"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert stats["baseline"]["accuracy"]["mean"] == pytest.approx(0.5)
    assert stats["difference"]["accuracy"] == paired_bootstrap_ci(
        [float(v) for v in frame["correct_model"]],
        [float(v) for v in frame["correct_baseline"]],
        n_resamples=N_BOOTSTRAP, seed=0,
    )  # fmt: skip
    assert stats["difference"]["accuracy_norm"]["mean"] == pytest.approx(1.0)
    assert f"Multiple choice — {ds.name} ({n} questions)" in report.to_markdown()


def test_the_math_section_counts_found_and_truncated_answers(tmp_path: Path) -> None:
    ds = load_dataset(f"math:{EVAL_DATA / 'math_sample.jsonl'}")
    n = ds.frame.height
    frame = pl.DataFrame(
        {
            "correct_model": [i < 5 for i in range(n)],
            "extracted_model": [None if i >= 16 else str(i) for i in range(n)],
            "finish_reason_model": ["length" if i >= 18 else "stop" for i in range(n)],
        }
    )
    report = Report("t")
    stats = sections(tmp_path, roles={"model": "tuned"}).accuracy(ds, frame, report)
    assert stats["model"]["accuracy"] == bootstrap_ci(
        [float(i < 5) for i in range(n)], n_resamples=N_BOOTSTRAP, seed=0
    )
    assert stats["model"]["answer_found"] == pytest.approx(16 / n)
    assert stats["model"]["truncated"] == pytest.approx(2 / n)
    assert "difference" not in stats
    markdown = report.to_markdown()
    assert f"Math (exact match) — {ds.name} ({n} questions)" in markdown
    assert "8-shot chain of thought" in markdown


def test_the_training_section_reads_the_log_beside_the_model(tmp_path: Path) -> None:
    section = sections(tmp_path)
    assert section.training(Report("t"), []) is None  # no log: no section
    (tmp_path / "model").mkdir()
    log = tmp_path / "model" / "train_log.jsonl"
    log.write_text(json.dumps({"step": 0, "eval_runtime": 2.0}) + "\n")
    assert section.training(Report("t"), []) is None
    assert section.notes == [f"training log {log} holds no loss entries"]
    entries = [{"step": i, "loss": 0.7 - 0.1 * i, "rewards/margins": 0.2 * i} for i in range(3)]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    report, plots = Report("t"), []
    training = section.training(report, plots)
    assert training is not None
    assert (training["steps"], training["first_loss"]) == (3, 0.7)
    assert training["final_loss"] == pytest.approx(0.5)
    assert training["final_reward_margin"] == pytest.approx(0.4)
    assert plots == ["training.png"] and (tmp_path / "training.png").is_file()
