"""`mipo eval`: statistics, answer extraction, judge parsing, data files, the full report."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from mipo.errors import ConfigError, CorpusError, InvalidInputError, OutputError
from mipo.evaluate import EvalConfig, run_eval
from mipo.evaluate.answers import choice_index, extract_number, math_correct
from mipo.evaluate.config import eval_generation
from mipo.evaluate.controls import copied_ngram_share, explain_gain
from mipo.evaluate.datasets import load_dataset, load_fewshot
from mipo.evaluate.judge import parse_score, win_rates
from mipo.evaluate.runner import MATH_INSTRUCTION, math_messages
from mipo.evaluate.stats import bootstrap_ci, cluster_weights, paired_bootstrap_ci
from mipo.generate import GenerationConfig

DATA = Path(__file__).resolve().parents[1] / "python" / "mipo" / "data" / "eval"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HELDOUT = [
    ("u1", "I am a vegetarian marathon runner.", "What should I eat before a long run?"),
    ("u2", "I have type 2 diabetes.", "What should I eat before a long run?"),
    ("u3", "I live in a small flat with two cats.", "Which plants are safe to keep?"),
    ("u1", "I am a vegetarian marathon runner.", "Which plants are safe to keep?"),
    ("u2", "I have type 2 diabetes.", "How can I sleep better?"),
    ("u3", "I live in a small flat with two cats.", "How can I sleep better?"),
]


def write_heldout(path: Path) -> Path:
    with path.open("w") as f:
        for user, context, question in HELDOUT:
            f.write(json.dumps({"user_id": user, "context": context, "question": question}) + "\n")
    return path


# --- statistics -------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_mean_and_shrinks_with_n() -> None:
    rng = random.Random(0)
    small = [rng.gauss(1.0, 1.0) for _ in range(20)]
    large = [rng.gauss(1.0, 1.0) for _ in range(2000)]
    a, b = bootstrap_ci(small, seed=1), bootstrap_ci(large, seed=1)
    assert a["low"] < a["mean"] < a["high"] and a["n"] == 20
    assert (b["high"] - b["low"]) < (a["high"] - a["low"]) / 5
    assert b["low"] < 1.0 < b["high"]
    assert bootstrap_ci(small, seed=1) == a  # seeded
    assert bootstrap_ci([None, 2.0, float("nan")])["n"] == 1
    assert math.isnan(bootstrap_ci([])["mean"])
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0], confidence=1.5)


def test_bootstrap_ci_coverage_is_near_nominal() -> None:
    """Over 200 samples of n = 40 from N(0, 1), the 95% interval holds 0 about 95% of the time."""
    rng = random.Random(42)
    covered = 0
    for trial in range(200):
        sample = [rng.gauss(0.0, 1.0) for _ in range(40)]
        ci = bootstrap_ci(sample, n_resamples=400, seed=trial)
        covered += ci["low"] <= 0.0 <= ci["high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_bootstrap_cancels_shared_variation() -> None:
    rng = random.Random(3)
    difficulty = [rng.gauss(0.0, 10.0) for _ in range(50)]
    base = [d + rng.gauss(0.0, 0.1) for d in difficulty]
    tuned = [d + 0.5 + rng.gauss(0.0, 0.1) for d in difficulty]
    paired = paired_bootstrap_ci(tuned, base, seed=0)
    assert 0.4 < paired["low"] < paired["mean"] < paired["high"] < 0.6
    assert "p_greater" not in paired  # nothing that reads like a p-value
    # Unpaired intervals of the two means overlap widely: pairing is what makes it visible.
    assert bootstrap_ci(tuned, seed=0)["low"] < bootstrap_ci(base, seed=0)["high"]
    exact = paired_bootstrap_ci([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (exact["mean"], exact["low"], exact["high"]) == (1.0, 1.0, 1.0)
    with pytest.raises(InvalidInputError):
        paired_bootstrap_ci([1.0], [1.0, 2.0])


def _clustered_sample(rng: random.Random, users: int, per_user: int) -> tuple[list, list]:
    """Values with a strong per-user effect (SD 1) and small per-prompt noise (SD 0.2)."""
    values, keys = [], []
    for u in range(users):
        effect = rng.gauss(0.0, 1.0)
        for _ in range(per_user):
            values.append(effect + rng.gauss(0.0, 0.2))
            keys.append(f"user{u}")
    return values, keys


def test_cluster_bootstrap_widens_intervals_and_keeps_coverage() -> None:
    """Prompts of one user share its effect: resampling prompts is far too narrow, resampling
    users holds the true mean (0) about 95% of the time."""
    rng = random.Random(7)
    covered = {"users": 0, "prompts": 0}
    for trial in range(150):
        values, users = _clustered_sample(rng, users=20, per_user=8)
        by_user = bootstrap_ci(values, clusters=users, n_resamples=400, seed=trial)
        by_prompt = bootstrap_ci(values, n_resamples=400, seed=trial)
        assert by_user["units"] == "users" and by_user["clusters"] == 20 and by_user["n"] == 160
        assert by_prompt["units"] == "prompts"
        covered["users"] += by_user["low"] <= 0.0 <= by_user["high"]
        covered["prompts"] += by_prompt["low"] <= 0.0 <= by_prompt["high"]
    assert 0.86 <= covered["users"] / 150 <= 0.99
    assert covered["prompts"] / 150 < 0.6


def test_cluster_bootstrap_by_hand() -> None:
    # Two users, each with identical values: a replicate's mean is the mean over drawn users.
    values = [1.0, 1.0, 3.0, 3.0]
    ci = bootstrap_ci(values, clusters=["a", "a", "b", "b"], n_resamples=500, seed=0)
    assert ci["mean"] == 2.0 and ci["clusters"] == 2
    assert (ci["low"], ci["high"]) == (1.0, 3.0)  # {a, a} and {b, b} are drawn
    # One cluster: nothing to resample.
    single = bootstrap_ci([1.0, 5.0], clusters=["a", "a"])
    assert (single["low"], single["mean"], single["high"]) == (3.0, 3.0, 3.0)
    # Missing values drop with their keys.
    kept = bootstrap_ci([None, 2.0, 4.0], clusters=["a", "b", "c"], seed=1)
    assert kept["n"] == 2 and kept["clusters"] == 2
    with pytest.raises(InvalidInputError):
        bootstrap_ci([1.0, 2.0], clusters=["a"])
    weights = cluster_weights(6, 200, clusters=list("aabbcc"), crossed=list("xyxyxy"), seed=2)
    assert weights.shape == (200, 6)
    # Crossed weights are products: rows sharing user and question share the weight.
    assert (weights >= 0).all() and np.allclose(weights, np.round(weights))
    assert (weights[:, 0] * weights[:, 3] == weights[:, 1] * weights[:, 2]).all()


def test_crossed_bootstrap_accounts_for_question_effects() -> None:
    """Each user asks each of 4 questions once; questions carry most of the variance. Resampling
    users only misses it; crossing users with questions covers the true mean."""
    rng = random.Random(11)
    covered = {"crossed": 0, "users": 0}
    for trial in range(120):
        q_effect = [rng.gauss(0.0, 1.0) for _ in range(4)]
        values, users, questions = [], [], []
        for u in range(30):
            for q in range(4):
                values.append(q_effect[q] + rng.gauss(0.0, 0.3))
                users.append(u)
                questions.append(q)
        crossed = bootstrap_ci(
            values, clusters=users, crossed=questions, n_resamples=300, seed=trial
        )
        assert crossed["units"] == "users and questions"
        one_way = bootstrap_ci(values, clusters=users, n_resamples=300, seed=trial)
        covered["crossed"] += crossed["low"] <= 0.0 <= crossed["high"]
        covered["users"] += one_way["low"] <= 0.0 <= one_way["high"]
    assert covered["crossed"] / 120 >= 0.8
    assert covered["users"] / 120 < 0.5


def test_copied_ngram_share_by_hand() -> None:
    context = "I am a vegetarian nurse on night shifts."
    # trigrams of the response: (i am a) (am a vegetarian) (a vegetarian nurse) (vegetarian
    # nurse who) (nurse who cooks): 3 of 5 occur in the context.
    assert copied_ngram_share("I am a vegetarian nurse who cooks", context) == pytest.approx(0.6)
    assert copied_ngram_share("Eat lentils and rice tonight", context) == 0.0
    assert copied_ngram_share("I AM A vegetarian!", context) == 1.0  # case and punctuation
    assert copied_ngram_share("Too short", context) is None
    assert copied_ngram_share("whatever words are here", "") is None


def test_explain_gain_separates_length_from_specificity() -> None:
    rng = random.Random(5)
    n = 120
    users = [i // 4 for i in range(n)]
    length = [rng.gauss(10.0, 3.0) for _ in range(n)]
    copying = [rng.gauss(0.0, 0.05) for _ in range(n)]
    noise = [rng.gauss(0.0, 1.0) for _ in range(n)]
    # A gain made entirely of length (0.8 nats per extra token): explained by length.
    by_length = [0.8 * d + e for d, e in zip(length, noise, strict=True)]
    out = explain_gain(
        by_length, {"copying": copying, "length": length}, clusters=users, n_resamples=400, seed=0
    )
    assert out["raw"]["low"] > 0
    assert out["adjusted"]["length"]["low"] < 0 < out["adjusted"]["length"]["high"]
    assert "length" in out["explained_by"] and "copying" not in out["explained_by"]
    # A real gain of 3 nats at zero length change, plus a length effect: it survives.
    real = [3.0 + 0.8 * d + e for d, e in zip(length, noise, strict=True)]
    out = explain_gain(
        real, {"copying": copying, "length": length}, clusters=users, n_resamples=400, seed=0
    )
    assert out["explained_by"] == []
    assert out["adjusted"]["all"]["low"] > 2.0
    assert out["rows_used"] == n and out["rows_dropped"] == 0
    # Missing covariates drop the row.
    out = explain_gain([1.0, 2.0, None, 4.0], {"length": [1.0, None, 3.0, 4.0]}, seed=0)
    assert out["rows_used"] == 2 and out["rows_dropped"] == 2


# --- answers and judge parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 7 apples.\n#### 7", "7"),
        ("#### 1,250", "1250"),
        ("#### $18.00", "18"),
        ("The answer is 42.", "42"),
        ("First 3 then 4, finally 12.5 liters.", "12.5"),
        ("It drops to -3 degrees.", "-3"),
        ("#### 15\nThen I kept talking about 99 things.", "15"),  # #### wins over last number
        ("no digits here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_number(text: str | None, expected: str | None) -> None:
    assert extract_number(text) == expected


def test_math_correct_and_gold_errors() -> None:
    assert math_correct("so 15 in total\n#### 15", "7 + 8 = 15\n#### 15")
    assert math_correct("The result is 15.0", "#### 15")
    assert not math_correct("#### 16", "#### 15")
    assert not math_correct("", "#### 15")
    with pytest.raises(InvalidInputError, match="holds no number"):
        math_correct("1", "unknown")


def test_choice_index_forms() -> None:
    choices = ["red", "blue", "green"]
    assert choice_index(2, choices) == 2
    assert choice_index("b", choices) == 1
    assert choice_index("green", choices) == 2
    assert choice_index("0", choices) == 0
    with pytest.raises(InvalidInputError, match="out of range"):
        choice_index("D", choices)
    with pytest.raises(InvalidInputError):
        choice_index("purple", choices)


def test_judge_parse_and_win_rates() -> None:
    assert parse_score("4") == 4
    assert parse_score(" Rating: 5/5 ") == 5
    assert parse_score("I'd say 3.") == 3
    assert parse_score("seven") is None
    assert parse_score("9 out of 10") is None  # no digit 1-5 at all
    rates = win_rates([5, 3, 2, None], [4, 3, 3, 1])
    assert (rates["wins"], rates["ties"], rates["losses"], rates["unscored"]) == (1, 1, 1, 1)
    assert rates["win_rate_ties_as_wins"] == pytest.approx(2 / 3)
    assert rates["win_rate_ties_as_half"] == pytest.approx(0.5)


# --- data files --------------------------------------------------------------------------------


def test_shipped_samples_and_kind_detection(tmp_path: Path) -> None:
    choice = load_dataset(str(DATA / "choice_sample.jsonl"))
    math_set = load_dataset(str(DATA / "math_sample.jsonl"))
    assert (choice.kind, choice.frame.height) == ("choice", 20)
    assert (math_set.kind, math_set.frame.height) == ("math", 20)
    assert all(extract_number(a) for a in math_set.frame["answer"])
    heldout = load_dataset(str(write_heldout(tmp_path / "h.jsonl")), limit=4)
    assert heldout.kind == "pmi" and heldout.has_users and heldout.has_context
    assert heldout.frame.height == 4
    assert heldout.frame["question"][0] == HELDOUT[0][2]
    assert heldout.frame["context"][0] == HELDOUT[0][1]
    forced = load_dataset(f"math:{DATA / 'math_sample.jsonl'}")
    assert forced.kind == "math"


def test_bad_data_files(tmp_path: Path) -> None:
    bad = tmp_path / "mc.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"]}) + "\n")
    with pytest.raises(CorpusError, match="lacks column\\(s\\) answer"):
        load_dataset(f"choice:{bad}")
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "C"}) + "\n")
    with pytest.raises(CorpusError, match="row 0"):
        load_dataset(str(bad))
    bad.write_text(json.dumps({"question": "q", "answer": "no idea"}) + "\n")
    with pytest.raises(CorpusError, match="holds no number"):
        load_dataset(str(bad))
    with pytest.raises(CorpusError, match="not found"):
        load_dataset(str(tmp_path / "missing.jsonl"))


# --- math prompts ------------------------------------------------------------------------------


def test_shipped_fewshot_examples_are_worked_and_unseen() -> None:
    examples = load_fewshot(None, 8)
    assert len(examples) == 8 and len({q for q, _ in examples}) == 8
    for _, solution in examples:
        assert solution.rstrip().splitlines()[-1].startswith("#### ")
        assert len(solution.splitlines()) >= 3  # a chain of thought, not just the number
    sample = set(load_dataset(str(DATA / "math_sample.jsonl")).frame["question"])
    assert not sample & {q for q, _ in examples}
    assert load_fewshot(None, 3) == examples[:3]
    assert load_fewshot(None, 0) == []


def test_fewshot_prompt_alternates_turns_and_renders(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    examples = load_fewshot(None, 8)
    messages = math_messages("How many legs do 3 spiders have?", examples)
    assert len(messages) == 17
    assert [m["role"] for m in messages] == ["user", "assistant"] * 8 + ["user"]
    for i, (question, solution) in enumerate(examples):
        assert messages[2 * i]["content"] == f"{question}\n\n{MATH_INSTRUCTION}"
        assert messages[2 * i + 1]["content"] == solution
    assert messages[-1]["content"].startswith("How many legs do 3 spiders have?\n\n")
    assert math_messages("Q?", []) == [{"role": "user", "content": f"Q?\n\n{MATH_INSTRUCTION}"}]
    # Through a real chat template: 17 turns in order, ending with the open assistant turn.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|im_start|>user") == 9 and text.count("<|im_start|>assistant") == 9
    assert text.index(examples[0][1]) < text.index(examples[7][0]) < text.index("spiders")
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_fewshot_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="fewer than the 9 shots"):
        load_fewshot(None, 9)
    unmarked = tmp_path / "shots.jsonl"
    unmarked.write_text(json.dumps({"question": "1 + 1?", "answer": "It is 2."}) + "\n")
    with pytest.raises(CorpusError, match="lacks the final '#### N'"):
        load_fewshot(unmarked, 1)
    with pytest.raises(CorpusError, match="not found"):
        load_fewshot(tmp_path / "missing.jsonl", 1)
    with pytest.raises(ConfigError, match="math_shots must be an integer >= 0, got -1"):
        EvalConfig(model="m", data=["d"], math_shots=-1)
    cpu, vllm = GenerationConfig(device="cpu"), GenerationConfig(backend="vllm")
    assert EvalConfig(model="m", data=["d"], generation=cpu).math_token_limit() == 512
    assert EvalConfig(model="m", data=["d"], generation=vllm).math_token_limit() == 1024
    assert EvalConfig(model="m", data=["d"], math_max_new_tokens=64).math_token_limit() == 64


def test_math_eval_uses_the_fewshot_prompt(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A 2-row 8-shot run: each response is what the model generates from the 8-shot prompt."""
    from mipo.evaluate.generation import generate_responses, render_prompts
    from mipo.models import resolve_model

    config = EvalConfig(
        model=str(tiny_model_dir), data=[str(DATA / "math_sample.jsonl")], limit=2,
        math_max_new_tokens=6, n_bootstrap=50, judge="none",
        generation=replace(eval_generation(), temperature=0.0, device="cpu"),
    )  # fmt: skip
    assert config.math_shots == 8
    result = run_eval(config, tmp_path / "out")
    assert result.metrics["math_setup"]["shots"] == 8
    assert result.metrics["math_setup"]["max_new_tokens"] == 6
    assert "8-shot chain of thought" in result.report_md.read_text()
    rows = pl.read_parquet(tmp_path / "out" / "math_math_sample.parquet")
    assert rows.height == 2
    resolved = resolve_model(str(tiny_model_dir))
    examples = load_fewshot(None, 8)
    fewshot_ids, context = render_prompts(
        resolved, [math_messages(q, examples) for q in rows["question"]]
    )
    zero_ids, _ = render_prompts(resolved, [math_messages(q, []) for q in rows["question"]])
    # The model was given the 8-shot prompts (their exact length), far longer than zero-shot ones.
    assert rows["prompt_tokens_model"].to_list() == [len(ids) for ids in fewshot_ids]
    assert all(len(f) > 4 * len(z) for f, z in zip(fewshot_ids, zero_ids, strict=True))
    again = generate_responses(
        resolved,
        fewshot_ids,
        GenerationConfig(max_new_tokens=6, temperature=0.0, batch_size=8, device="cpu"),
    )
    assert rows["response_model"].to_list() == [r.text for r in again]
    # The tiny model's 512-token context is too short for 8 shots, and the report says so.
    assert context == 512 and len(fewshot_ids[0]) > context
    assert any("lower --set math_shots=N" in note for note in result.metrics["notes"])


# --- the full evaluation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA DPO run on the tiny model (a few steps), as `mipo train` leaves it."""
    from mipo.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    rows = []
    for i, (user, context, question) in enumerate(HELDOUT):
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": context},
                    {"role": "user", "content": question},
                ],
                "chosen": [{"role": "assistant", "content": f"For you ({user}): answer {i}."}],
                "rejected": [{"role": "assistant", "content": f"Generic answer {(i + 1) % 6}."}],
                "id": str(i),
                "negative_id": str((i + 1) % 6),
            }
        )
    (root / "pairs").mkdir()
    pl.DataFrame(rows).write_parquet(root / "pairs" / "pairs.parquet")
    (root / "pairs" / "run.json").write_text(
        json.dumps({"model": {"name": "tiny", "path": str(tiny_model_dir)}})
    )
    config = TrainConfig(lora=True, learning_rate=1e-3, max_steps=3, batch_size=2)
    train(root / "pairs" / "pairs.parquet", root / "train", config)
    return root / "train"


def test_eval_cli_full_report(trained: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from mipo.cli import cli
    from mipo.models import load_model
    from mipo.scoring import score_responses

    heldout = write_heldout(tmp_path / "heldout.jsonl")
    out = tmp_path / "eval"
    args = [
        "eval", "--model", str(trained), "--compare", str(tiny_model_dir),
        "--judge", str(tiny_model_dir), str(heldout), str(DATA / "choice_sample.jsonl"),
        str(DATA / "math_sample.jsonl"), "--limit", "4", "--eval-max-new-tokens", "8",
        "--set", "math_max_new_tokens=8", "--n-bootstrap", "200", "-k", "2", "-o", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "PMI heldout" in result.output and "report:" in result.output

    for name in ("report.md", "report.html", "metrics.json", "pmi_heldout.png", "training.png"):
        assert (out / name).is_file(), name
    for png in ("pmi_heldout.png", "training.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert not (out / ".work").exists()
    report = (out / "report.md").read_text()
    assert "![PMI distributions, heldout](pmi_heldout.png)" in report
    assert "Judged personalization" in report and "Multiple choice" in report
    assert '<img src="training.png"' in (out / "report.html").read_text()

    metrics = json.loads((out / "metrics.json").read_text())
    # The reference is the model the adapter was trained from (train_config.json).
    assert Path(metrics["models"]["reference"]) == tiny_model_dir.resolve()
    pmi = metrics["pmi"]["heldout"]
    for role in ("model", "baseline"):
        stat = pmi[role]["pmi_random"]
        assert stat["n"] == 4 and stat["low"] <= stat["mean"] <= stat["high"]
        assert pmi[role]["pmi_same_question"]["n"] == 4  # every row has a context
        for estimator in ("", "_infonce", "_mean_log"):
            assert pmi[role][f"pmi_context_drop{estimator}"]["n"] == 4
        assert pmi[role]["pmi_random"]["units"] == "users and questions"
    assert pmi["contrasts"]["k"] == 2
    # The 4 rows hold 3 users: each row has exactly the 2 other users' contexts to contrast.
    assert pmi["contrasts"]["same_question"] == {"fewer_than_wanted": 0, "none": 0, "wanted": 2}
    assert "p_greater" not in pmi["difference"]["pmi_random"]
    headline = metrics["personalization"]
    assert headline["dataset"] == "heldout" and headline["contrast"] == "same_question"
    assert headline["gain"] == pmi["difference"]["pmi_same_question"]
    assert headline["excludes_zero"] == (
        headline["gain"]["low"] > 0 or headline["gain"]["high"] < 0
    )
    assert "adjusted for copying" in report and "same question, other users" in report
    # Persona adoption beside the other controls, in the adjustment, the headline and the table.
    for role in ("model", "baseline"):
        assert pmi[role]["persona"]["n"] == 4
    assert "persona" in pmi["controls"]["same_question"]["covariates"]
    assert headline["persona_change"] == pmi["difference"]["persona"]
    assert "speak as the user (persona adoption)" in report
    # Examples drawn with the seed, never chosen: all 4 rows here, in the file's order.
    examples = pmi["examples"]
    assert [e["id"] for e in examples] == pl.read_parquet(out / "pmi_heldout.parquet")[
        "id"
    ].to_list()
    assert all({"context", "question", "model", "baseline"} <= set(e) for e in examples)
    assert "## Examples — heldout" in report
    # What the numbers were computed with.
    assert metrics["context_format"] == "user-turn"
    assert metrics["dtype"] in ("float32", "bfloat16")
    assert f"scored in {metrics['dtype']}" in report
    judge = metrics["judge"]["heldout"]
    assert judge["wins"] + judge["ties"] + judge["losses"] == 4
    assert judge["win_rate_ties_as_wins"] >= judge["win_rate_ties_as_half"]
    # A judge that gives every response one score is flagged, in the metrics and the report.
    judged = pl.read_parquet(out / "pmi_heldout.parquet")
    given = set(judged["judge_score_model"]) | set(judged["judge_score_baseline"])
    if len(given) == 1:
        assert judge["single_score"] == given.pop() and judge["ties"] == 4
        assert "gave every response the same score" in report
    else:
        assert judge["single_score"] is None and "same score" not in report
    for section in ("multiple_choice", "math"):
        (stats,) = metrics[section].values()
        assert 0.0 <= stats["model"]["accuracy"]["mean"] <= 1.0
        assert stats["model"]["accuracy"]["n"] == 4
    assert metrics["training"]["steps"] == 3

    # Per-row PMI recomputed by hand from the reference for one prompt.
    rows = pl.read_parquet(out / "pmi_heldout.parquet")
    assert rows.height == 4 and rows["response_model"].dtype == pl.String
    reference = load_model(tiny_model_dir, device="cpu")
    cond = score_responses(reference, rows["prompt"][:1], rows["response_model"][:1])
    assert rows["logprob_model"][0] == pytest.approx(cond["logprob"][0], abs=1e-4)
    # Multiple choice: the picked option really has the highest log-likelihood.
    mc = pl.read_parquet(out / "choice_choice_sample.parquet")
    row = mc.row(0, named=True)
    scores = score_responses(
        reference, [[{"role": "user", "content": row["question"]}]] * len(row["choices"]),
        row["choices"],
    )["logprob"].to_list()  # fmt: skip
    assert row["pick_baseline"] == max(range(len(scores)), key=scores.__getitem__)

    # Rerunning into the same directory needs --overwrite.
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_eval_without_baseline_skips_judge(tiny_model_dir: Path, tmp_path: Path) -> None:
    heldout = write_heldout(tmp_path / "heldout.jsonl")
    config = EvalConfig(
        model=str(tiny_model_dir), data=[str(heldout)], judge=str(tiny_model_dir),
        limit=3, n_bootstrap=100, k=1, generation=replace(eval_generation(), max_new_tokens=6),
    )  # fmt: skip
    result = run_eval(config, tmp_path / "out")
    assert result.metrics["models"]["reference_source"].startswith("the evaluated model")
    assert "baseline" not in result.metrics["pmi"]["heldout"]
    assert result.metrics["judge"] == {}
    assert any("--compare" in note for note in result.metrics["notes"])
    assert "training" not in result.metrics
    with pytest.raises(OutputError):
        run_eval(config, tmp_path / "out")


def test_eval_cache_reuses_a_models_results(
    trained: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second evaluation with the same baseline reads the baseline back from the cache (no
    generation for it) and reports the same numbers; a corrupt entry is an error."""
    import mipo.evaluate.generation as generation

    heldout = write_heldout(tmp_path / "heldout.jsonl")
    common = {
        "data": [str(heldout), str(DATA / "choice_sample.jsonl")], "compare": str(tiny_model_dir),
        "limit": 4, "n_bootstrap": 100, "k": 2, "cache_dir": str(tmp_path / "cache"),
        "generation": replace(eval_generation(), max_new_tokens=6, device="cpu"),
    }  # fmt: skip
    first = run_eval(EvalConfig(model=str(trained), **common), tmp_path / "a")
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 4  # 2 models x 2 files
    generated: list[int] = []
    real = generation.generate_responses

    def counting(resolved: object, prompt_ids: list, *args: object, **kwargs: object) -> object:
        generated.append(len(prompt_ids))
        return real(resolved, prompt_ids, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(generation, "generate_responses", counting)
    second = run_eval(EvalConfig(model=str(trained), **common), tmp_path / "b")
    assert generated == []  # both models came from the cache
    for key in ("pmi", "multiple_choice"):
        assert second.metrics[key] == first.metrics[key]
    a = pl.read_parquet(tmp_path / "a" / "pmi_heldout.parquet")
    b = pl.read_parquet(tmp_path / "b" / "pmi_heldout.parquet")
    assert a.equals(b.select(a.columns))
    # Other settings (a new seed) are other entries: the models are generated again.
    run_eval(EvalConfig(model=str(trained), **{**common, "seed": 1}), tmp_path / "c")
    assert generated == [4, 4]
    for entry in (tmp_path / "cache").glob("*.parquet"):
        entry.write_bytes(b"not parquet")
    with pytest.raises(OutputError, match=r"evaluation cache entry \S+ is unreadable"):
        run_eval(EvalConfig(model=str(trained), **common), tmp_path / "d")


def test_eval_config_validation() -> None:
    with pytest.raises(ConfigError, match="k must be an integer >= 1, got 0"):
        EvalConfig(model="m", data=["d"], k=0)
    with pytest.raises(ConfigError, match="top_p"):
        EvalConfig(model="m", data=["d"], generation=GenerationConfig(top_p=0))
    with pytest.raises(ConfigError, match="at least one evaluation file"):
        EvalConfig(model="m", data=[])
    assert EvalConfig(model="m", data=["d"], judge="none").judge is None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 8-shot math generation on a 135M model: minutes on 2 busy CPU cores
def test_train_then_eval_on_the_builtin_model(smollm2_dir: Path, tmp_path: Path) -> None:
    """The real built-in model: a few LoRA steps, then every evaluation against the base."""
    from mipo.train import TrainConfig, train

    rows = [
        {
            "prompt": [
                {"role": "system", "content": context},
                {"role": "user", "content": question},
            ],
            "chosen": [{"role": "assistant", "content": f"As {context.lower()} I suggest this."}],
            "rejected": [{"role": "assistant", "content": "Here is a generic answer."}],
        }
        for _, context, question in HELDOUT
    ]
    (tmp_path / "pairs").mkdir()
    pl.DataFrame(rows).write_parquet(tmp_path / "pairs" / "pairs.parquet")
    (tmp_path / "pairs" / "run.json").write_text(
        json.dumps({"model": {"name": "smollm2-135m", "path": str(smollm2_dir)}})
    )
    trained = train(
        tmp_path / "pairs", tmp_path / "train", TrainConfig(lora=True, max_steps=3, batch_size=2)
    )
    heldout = write_heldout(tmp_path / "heldout.jsonl")
    config = EvalConfig(
        model=str(trained.output_dir),
        compare=str(smollm2_dir),
        data=[str(heldout), str(DATA / "choice_sample.jsonl"), str(DATA / "math_sample.jsonl")],
        limit=5,
        generation=replace(eval_generation(), max_new_tokens=48),
        math_max_new_tokens=96,
        n_bootstrap=500,
        judge="smollm2-135m",  # the built-in model judges (the default is no judge)
    )
    result = run_eval(config, tmp_path / "eval")
    metrics = result.metrics
    assert metrics["judge"]["heldout"]["n"] == 5
    # A response generated for its own prompt is likelier under that prompt than under other
    # users' prompts: a broken generator or scorer (shuffled rows, wrong prompt) fails this.
    assert metrics["pmi"]["heldout"]["baseline"]["pmi_random"]["mean"] > 0
    assert metrics["pmi"]["heldout"]["model"]["pmi_random"]["mean"] > 0
    assert metrics["multiple_choice"]["choice_sample"]["baseline"]["accuracy"]["n"] == 5
    assert metrics["pmi"]["heldout"]["model"]["pmi_random"]["n"] == 5
    rows_out = pl.read_parquet(tmp_path / "eval" / "pmi_heldout.parquet")
    assert (rows_out["response_baseline"].str.len_chars() > 0).all()


def test_a_corrupt_training_record_does_not_silently_change_the_reference(tmp_path: Path) -> None:
    """The PMI reference comes from train_config.json; a damaged one is an error naming the file
    and the way out (--reference), never a quiet fall back to another reference."""
    from mipo.errors import ModelError
    from mipo.evaluate.runner import _train_record

    trained = tmp_path / "train"
    (trained / "model").mkdir(parents=True)
    assert _train_record(str(trained / "model")) is None  # no record: the documented fallbacks
    (trained / "train_config.json").write_text('{"resolved": {"reference_model": ')
    with pytest.raises(ModelError, match=r"training record '.*train_config\.json' .*--reference"):
        _train_record(str(trained / "model"))
