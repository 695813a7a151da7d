"""Log-prob scoring: exact values, TRL-identical tokenization, batching, PMI helpers."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from mipo.errors import ConfigError, InvalidInputError
from mipo.models import load_model
from mipo.prompt_format import PromptFormat
from mipo.scoring import (
    contrast_contexts,
    contrast_indices,
    pmi_estimates,
    pmi_scores,
    score_responses,
    tokenize_prompt_response,
)

PROMPTS = [
    [{"role": "user", "content": "I am a nurse working night shifts. How can I sleep better?"}],
    [
        {"role": "system", "content": "I cook for four on a tight budget."},
        {"role": "user", "content": "Suggest a cheap weekly dinner plan."},
    ],
    [{"role": "user", "content": "Hi"}],
]
RESPONSES = [
    "Keep the room dark and cool.",
    "Beans, rice and seasonal vegetables; cook big batches on Sunday.",
    "Hello! 😀",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[object, object]:
    # fp32: these tests pin exact values; bf16 (the default on CPUs with bf16 arithmetic) is checked apart.
    return load_model(tiny_model_dir, device="cpu", dtype="float32")


def test_score_equals_hand_computed_log_softmax_sum(tiny: tuple[object, object]) -> None:
    import torch

    model, tokenizer = tiny
    # Hand computation for one example: one unpadded forward pass, log-softmax at each position
    # that predicts a response token, summed.
    prompt_ids, response_ids = tokenize_prompt_response(tokenizer, PROMPTS[1], RESPONSES[1])
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    expected = sum(
        float(logp[len(prompt_ids) + t - 1, token]) for t, token in enumerate(response_ids)
    )
    # Scored in a batch with shorter and longer rows: padding and the logits window must not
    # change it.
    scores = score_responses(tiny, PROMPTS, RESPONSES, batch_size=3)
    assert scores.schema == pl.Schema({"logprob": pl.Float64, "num_tokens": pl.Int64})
    assert scores["num_tokens"][1] == len(response_ids)
    assert scores["logprob"][1] == pytest.approx(expected, abs=1e-4)
    assert expected < 0


def test_batching_does_not_change_scores(tiny: tuple[object, object]) -> None:
    one = score_responses(tiny, PROMPTS, RESPONSES, batch_size=1)
    three = score_responses(tiny, PROMPTS, RESPONSES, batch_size=3)
    assert one["num_tokens"].to_list() == three["num_tokens"].to_list()
    for a, b in zip(one["logprob"], three["logprob"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_accepts_polars_prompts_path_and_plain_strings(
    tiny_model_dir: Path, tiny: tuple[object, object]
) -> None:
    series = pl.Series("prompt", PROMPTS[:2])
    from_series = score_responses(tiny, series, pl.Series(RESPONSES[:2]))
    from_path = score_responses(
        tiny_model_dir, PROMPTS[:2], RESPONSES[:2], device="cpu", dtype="float32"
    )
    assert from_series["logprob"].to_list() == pytest.approx(from_path["logprob"].to_list())
    plain = score_responses(tiny, ["Hi"], ["Hello! 😀"])
    assert plain["logprob"][0] == pytest.approx(
        score_responses(tiny, [PROMPTS[2]], [RESPONSES[2]])["logprob"][0]
    )


def test_tokenization_matches_trl_dpo_trainer(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The prompt/response split equals what trl.DPOTrainer trains on, token for token."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = {
        "prompt": PROMPTS[:2],
        "chosen": [[{"role": "assistant", "content": r}] for r in RESPONSES[:2]],
        "rejected": [[{"role": "assistant", "content": r}] for r in reversed(RESPONSES[:2])],
    }
    args = DPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        dataloader_pin_memory=False,
    )
    trainer = DPOTrainer(
        model=str(tiny_model_dir),
        args=args,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset
    for i in range(2):
        prompt_ids, chosen_ids = tokenize_prompt_response(
            tokenizer, rows["prompt"][i], rows["chosen"][i][0]["content"]
        )
        _, rejected_ids = tokenize_prompt_response(
            tokenizer, rows["prompt"][i], rows["rejected"][i][0]["content"]
        )
        assert prepared[i]["prompt_ids"] == prompt_ids
        assert prepared[i]["chosen_ids"] == chosen_ids
        assert prepared[i]["rejected_ids"] == rejected_ids
    # The response includes the template's end-of-turn token, as in training.
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in chosen_ids


def test_bad_inputs_are_rejected(tiny: tuple[object, object]) -> None:
    with pytest.raises(InvalidInputError, match="2 prompts but 1 responses"):
        score_responses(tiny, PROMPTS[:2], RESPONSES[:1])
    with pytest.raises(InvalidInputError, match="role/content"):
        score_responses(tiny, [[{"text": "hi"}]], ["x"])
    with pytest.raises(ConfigError, match="batch_size"):
        score_responses(tiny, PROMPTS, RESPONSES, batch_size=0)
    assert score_responses(tiny, [], []).height == 0


def test_dtype_policy_and_bf16_scores_stay_close(tiny_model_dir: Path) -> None:
    import torch

    from mipo.models import bf16_is_fast

    fp32 = load_model(tiny_model_dir, device="cpu", dtype="float32")
    bf16 = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    auto = load_model(tiny_model_dir, device="cpu")
    assert next(fp32[0].parameters()).dtype == torch.float32
    assert next(bf16[0].parameters()).dtype == torch.bfloat16
    expected = torch.bfloat16 if bf16_is_fast("cpu") else torch.float32
    assert next(auto[0].parameters()).dtype == expected
    a = score_responses(fp32, PROMPTS, RESPONSES)["logprob"].to_numpy()
    b = score_responses(bf16, PROMPTS, RESPONSES)["logprob"].to_numpy()
    # bf16 weights and activations, fp32 log-softmax: a few percent of the log-probability.
    assert (abs(a - b) <= 0.05 * abs(a) + 0.5).all(), (a, b)
    with pytest.raises(ConfigError, match="dtype must be auto, float32 or bfloat16"):
        load_model(tiny_model_dir, device="cpu", dtype="float16")


def test_contrast_indices_are_seeded_and_exclude_the_row() -> None:
    random_sets = contrast_indices(6, 3, seed=1)
    assert random_sets == contrast_indices(6, 3, seed=1)
    assert random_sets != contrast_indices(6, 3, seed=2)
    for i, js in enumerate(random_sets):
        assert len(js) == 3 and len(set(js)) == 3 and i not in js
    assert all(len(js) == 1 for js in contrast_indices(2, 5, seed=0))  # only one other prompt
    with pytest.raises(ConfigError):
        contrast_indices(3, 0)


def test_contrast_contexts_come_from_other_users() -> None:
    contexts = ["vegan", "runner", "vegan", "", "nurse", "runner"]
    users = ["a", "b", "a", "c", "d", "b"]
    drawn = contrast_contexts(contexts, 8, seed=0, users=users)
    assert drawn == contrast_contexts(contexts, 8, seed=0, users=users)
    assert sorted(drawn[0]) == ["nurse", "runner"]  # every other user's context, not its own
    assert sorted(drawn[1]) == ["nurse", "vegan"]
    assert drawn[3] == []  # no context, no same-question contrast
    # A user holding two contexts never contrasts with either of them.
    two = contrast_contexts(["x", "y", "z"], 5, seed=1, users=["a", "a", "b"])
    assert [sorted(c) for c in two] == [["z"], ["z"], ["x", "y"]]
    assert all(len(c) == 1 for c in contrast_contexts(["p", "q", "r"], 1, seed=3))
    with pytest.raises(InvalidInputError):
        contrast_contexts(["p", "q"], 1, users=["a"])


def test_pmi_estimators_by_hand() -> None:
    # log π(y|x) = -10; contrasts -12 and -14 (nats).
    est = pmi_estimates(-10.0, [-12.0, -14.0])
    lme = -10.0 - math.log((math.exp(-12.0) + math.exp(-14.0)) / 2)
    infonce = -10.0 - math.log((math.exp(-10.0) + math.exp(-12.0) + math.exp(-14.0)) / 3)
    assert est["lme"] == pytest.approx(lme, abs=1e-12) == pytest.approx(2.566219, abs=1e-6)
    assert est["infonce"] == pytest.approx(infonce, abs=1e-12)
    assert est["mean_log"] == 3.0
    # One contrast: lme and mean of logs agree; InfoNCE is log 2 - log(1 + e^-d).
    one = pmi_estimates(-5.0, [-7.0])
    assert one["lme"] == one["mean_log"] == 2.0
    assert one["infonce"] == pytest.approx(math.log(2) - math.log1p(math.exp(-2.0)))
    assert pmi_estimates(-5.0, []) == {"lme": None, "infonce": None, "mean_log": None}
    # Stable far from 0 (a naive exp would underflow to log(0)).
    far = pmi_estimates(-2000.0, [-2001.0, -2003.0])
    assert far["lme"] == pytest.approx(-math.log((math.exp(-1) + math.exp(-3)) / 2))


def test_one_unlikely_contrast_inflates_only_the_mean_of_logs() -> None:
    """A response very unlikely under one contrast prompt: the mean of logs runs away, the
    log-mean-exp barely moves and the InfoNCE estimate stays below log(k + 1)."""
    k = 4
    typical = pmi_estimates(-20.0, [-22.0] * k)
    outlier = pmi_estimates(-20.0, [-22.0] * (k - 1) + [-500.0])
    assert outlier["mean_log"] - typical["mean_log"] == pytest.approx(478.0 / k)  # +119.5 nats
    assert outlier["lme"] - typical["lme"] == pytest.approx(math.log(k / (k - 1)), abs=1e-9)
    assert outlier["infonce"] < math.log(k + 1) and typical["infonce"] < math.log(k + 1)
    assert abs(outlier["infonce"] - typical["infonce"]) < 0.3
    for est in (typical, outlier):  # Jensen: mean of logs >= log-mean-exp
        assert est["mean_log"] >= est["lme"] >= est["infonce"]


def test_pmi_scores_match_the_reference_by_hand(tiny: tuple[object, object]) -> None:
    contexts = ["I am a nurse on night shifts.", "I cook for four on a tight budget.", "", "I run."]
    questions = ["How can I sleep better?", "Suggest a dinner plan.", "Hi", "Dinner ideas?"]
    nocontext = [[{"role": "user", "content": q}] for q in questions]
    fmt = PromptFormat()  # the default: the context opens the user's turn
    prompts = [fmt.messages(c, n) for c, n in zip(contexts, nocontext, strict=True)]
    responses = ["Keep the room dark.", "Beans and rice.", "Hello!", "Pasta."]
    users = ["u1", "u2", "u3", "u4"]
    df = pmi_scores(
        tiny, prompts, responses, k=2, seed=3, contexts=contexts, nocontext=nocontext, users=users
    )

    def logp(messages: list[dict[str, str]], response: str) -> float:
        return float(score_responses(tiny, [messages], [response])["logprob"][0])

    row = 1
    cond = logp(prompts[row], responses[row])
    assert df["logprob"][row] == pytest.approx(cond, abs=1e-4)
    # random: the k contrast prompts drawn by contrast_indices with the same seed.
    others = [logp(prompts[j], responses[row]) for j in contrast_indices(4, 2, seed=3)[row]]
    expected = pmi_estimates(cond, others)
    for estimator, column in (("lme", ""), ("infonce", "_infonce"), ("mean_log", "_mean_log")):
        assert df[f"pmi_random{column}"][row] == pytest.approx(expected[estimator], abs=1e-4)
    # same question, other users: row 1's question with the two other users' contexts.
    swapped = contrast_contexts(contexts, 2, seed=4, users=users)[row]
    assert sorted(swapped) == sorted([contexts[0], contexts[3]])
    values = [logp(fmt.messages(c, nocontext[row]), responses[row]) for c in swapped]
    assert df["pmi_same_question"][row] == pytest.approx(
        pmi_estimates(cond, values)["lme"], abs=1e-4
    )
    # Another format puts the other users' contexts where it puts every context.
    raw = PromptFormat("raw-system")
    raw_df = pmi_scores(
        tiny,
        [raw.messages(c, n) for c, n in zip(contexts, nocontext, strict=True)],
        responses,
        k=2,
        seed=3,
        contexts=contexts,
        nocontext=nocontext,
        users=users,
        prompt_format=raw,
    )
    raw_cond = logp(raw.messages(contexts[row], nocontext[row]), responses[row])
    raw_values = [logp(raw.messages(c, nocontext[row]), responses[row]) for c in swapped]
    assert raw_df["pmi_same_question"][row] == pytest.approx(
        pmi_estimates(raw_cond, raw_values)["lme"], abs=1e-4
    )
    # context drop: the question alone.
    drop = logp(nocontext[row], responses[row])
    assert df["pmi_context_drop"][row] == pytest.approx(cond - drop, abs=1e-4)
    # The row without a context has neither contrast.
    assert df["num_contrasts_same_question"].to_list() == [2, 2, 0, 2]
    assert df["num_contrasts_context_drop"].to_list() == [1, 1, 0, 1]
    assert df["pmi_same_question"][2] is None and df["pmi_context_drop"][2] is None
    assert df["num_contrasts_random"].to_list() == [2, 2, 2, 2]
    with pytest.raises(InvalidInputError, match="at least 2"):
        pmi_scores(tiny, prompts[:1], responses[:1])
