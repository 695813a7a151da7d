"""benches/recount_persona.py: the persona recount on a hand-made pmi file with known verdicts
under the recorded and the current rule, and the skipping of unfinished runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))  # recount_persona imports results_md beside it
_spec = importlib.util.spec_from_file_location(
    "recount_persona", ROOT / "benches/recount_persona.py"
)
assert _spec and _spec.loader
recount_persona = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recount_persona)

CTX = "I'm a retired teacher, 71, living alone in Chicago. I have arthritis in my knees."
# Flagged by the current rule only (a "your" elsewhere no longer undoes the claimed identity).
AS_USER_NOW = "Sorry for your pain, but as a retired teacher, I'm unable to help."
IM_YOUR = "I'm your retired teacher from Chicago."
# Flagged by neither rule.
TO_USER = "As a retired teacher with arthritis, you might enjoy gardening."
ADVICE = "I'd recommend gentle gardening; it is easy on arthritic knees."
N = 40


def _frame() -> pl.DataFrame:
    """40 prompts, 10 users crossed with 4 questions; the last has no context. Current rule:
    base flags rows 0-1, tuned users u0-u3 (16 rows). Recorded: base none, tuned row 0 only. The gain is
    20 x the current rule's persona change plus noise."""
    rng = np.random.default_rng(0)
    has_context = [i < N - 1 for i in range(N)]
    base_now = [1.0 if i < 2 else 0.0 for i in range(N)]
    tuned_now = [1.0 if i % 10 < 4 else 0.0 for i in range(N)]
    gain = [
        20 * (t - b) + float(rng.normal(0, 1)) for t, b in zip(tuned_now, base_now, strict=True)
    ]

    def noise(scale: float) -> list[float]:
        return [float(v) for v in rng.normal(0, scale, N)]

    return pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(N)],
            "question": [f"q{i // 10}" for i in range(N)],
            "context": [CTX if c else None for c in has_context],
            "user_id": [f"u{i % 10}" for i in range(N)],
            "response_baseline": [AS_USER_NOW if i < 2 else ADVICE for i in range(N)],
            "response_model": [IM_YOUR if i % 10 < 4 else TO_USER for i in range(N)],
            "persona_baseline": [0.0 if c else None for c in has_context],
            "persona_model": [
                (1.0 if i == 0 else 0.0) if c else None for i, c in enumerate(has_context)
            ],
            "pmi_same_question_baseline": [0.0] * N,
            "pmi_same_question_model": gain,
            "copy_share_baseline": [0.1] * N,
            "copy_share_model": [0.1 + abs(v) for v in noise(0.05)],
            "context_words_baseline": [0.2] * N,
            "context_words_model": [0.2 + abs(v) for v in noise(0.05)],
            "num_tokens_baseline": [50] * N,
            "num_tokens_model": [int(50 + abs(v)) for v in noise(5)],
            "logprob_baseline": [-50.0] * N,
            "logprob_model": [-50.0 + v for v in noise(3)],
        }
    )


def test_recount_counts_verdicts_and_adjusts_with_the_current_rule() -> None:
    out = recount_persona.recount(_frame(), n_resamples=400, seed=0)
    rec, now = out["recorded"], out["now"]
    assert (rec["base_count"], rec["tuned_count"]) == ((0, 39), (1, 39))
    assert (now["base_count"], now["tuned_count"]) == ((2, 39), (16, 39))
    assert abs(now["delta"]["mean"] - 14 / 39) < 1e-12
    assert now["delta"]["units"] == "users and questions"
    assert (out["prompts"], out["users"], out["questions"]) == (40, 10, 4)
    # Within the margin as recorded (1/39), far above it now (14/39).
    assert rec["meets"] and not now["meets"]
    # The gain is the current rule's persona change: adjusting for it removes the gain, the
    # recorded verdicts do not.
    assert out["adjusted_recomputed"]["low"] > 0
    assert out["adjusted_now"]["low"] < 0 < out["adjusted_now"]["high"]


def _run(folder: Path, frame: pl.DataFrame, *, metrics: bool = True) -> None:
    (folder / "round-1" / "eval").mkdir(parents=True)
    frame.write_parquet(folder / "round-1" / "eval" / "pmi_eval.parquet")
    if metrics:
        stored = {"mean": 1.0, "low": 0.5, "high": 1.5, "n": 40}
        (folder / "metrics.json").write_text(
            json.dumps(
                {
                    "options": {"n_bootstrap": 200, "seed": 0},
                    "rounds": [{"personalization": {"adjusted_gain": {"all": stored}}}],
                }
            ),
            encoding="utf-8",
        )


def test_main_skips_unfinished_runs_and_compares_drop_persona(tmp_path: Path, capsys) -> None:
    frame = _frame()
    _run(tmp_path / "beta=0.1_fmt=x", frame)
    # The drop-persona run's tuned answers never speak as the user.
    _run(
        tmp_path / "beta=0.1_fmt=x_drop-persona",
        frame.with_columns(pl.lit(TO_USER).alias("response_model")),
    )
    _run(tmp_path / "beta=0.1_epochs=3", frame, metrics=False)
    assert recount_persona.main(["--runs", str(tmp_path), "--no-write"]) == 0
    text = capsys.readouterr().out
    assert "Skipped (no `round-1/eval/pmi_eval.parquet` and `metrics.json` yet): epochs=3" in text
    assert "| beta=0.1 fmt=x | 0.00 (0/39) | 0.05 (2/39) | 0.03 (1/39) | 0.41 (16/39) |" in text
    # Above the margin: neither run as recorded; the run without drop-persona now.
    assert "0 of 2 under the recorded rule, 1 of 2 under the current rule (beta=0.1 fmt=x)" in text
    assert "drop-persona still lowers the tuned model's persona adoption." in text
