"""Log-prob scoring: exact values, TRL-identical tokenization, batching, PMI helpers."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mipo.errors import ConfigError, InvalidInputError
from mipo.scoring import (
    contrast_indices,
    load_model,
    pmi_scores,
    score_responses,
    tokenize_prompt_response,
    unconditional_logprobs,
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
    return load_model(tiny_model_dir, device="cpu")


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
    from_path = score_responses(tiny_model_dir, PROMPTS[:2], RESPONSES[:2], device="cpu")
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


def test_contrast_indices_random_and_same_question() -> None:
    random_sets = contrast_indices(6, 3, seed=1)
    assert random_sets == contrast_indices(6, 3, seed=1)
    assert random_sets != contrast_indices(6, 3, seed=2)
    for i, js in enumerate(random_sets):
        assert len(js) == 3 and len(set(js)) == 3 and i not in js
    assert all(len(js) == 1 for js in contrast_indices(2, 5, seed=0))  # only one other prompt

    questions = ["q1", "q1", "q1", "q2", "q2", "q3"]
    users = ["a", "a", "b", "a", "c", "a"]
    same = contrast_indices(6, 4, seed=0, questions=questions, users=users)
    assert same == [[2], [2], [0, 1], [4], [3], []]
    with pytest.raises(ConfigError):
        contrast_indices(3, 0)


def test_pmi_is_conditional_minus_mean_contrast(tiny: tuple[object, object]) -> None:
    prompts = [*PROMPTS, [{"role": "user", "content": "How can I sleep better?"}]]
    responses = [*RESPONSES, "Keep a fixed schedule."]
    questions = ["sleep", "dinner", "hi", "sleep"]
    users = ["u1", "u2", "u3", "u4"]
    df = pmi_scores(tiny, prompts, responses, k=2, seed=3, questions=questions, users=users)
    contrasts = contrast_indices(4, 2, seed=3)
    row = 1
    cond = score_responses(tiny, [prompts[row]], [responses[row]])["logprob"][0]
    others = score_responses(
        tiny, [prompts[j] for j in contrasts[row]], [responses[row]] * len(contrasts[row])
    )["logprob"].to_list()
    assert df["pmi_random"][row] == pytest.approx(cond - sum(others) / len(others), abs=1e-4)
    # log-mean-exp >= mean of logs (Jensen), so its PMI is <= the mean-of-logs PMI.
    for a, b in zip(df["pmi_random"], df["pmi_random_lme"], strict=True):
        assert b <= a + 1e-9
    # Same question from another user exists only for rows 0 and 3.
    assert df["num_contrasts_same_question"].to_list() == [1, 0, 0, 1]
    assert df["pmi_same_question"].is_null().to_list() == [False, True, True, False]
    unc = unconditional_logprobs(tiny, prompts, responses, [[3], [], [], [0]])
    assert df["pmi_same_question"][0] == pytest.approx(
        df["logprob"][0] - unc["mean_logprob"][0], abs=1e-4
    )
    with pytest.raises(InvalidInputError, match="at least 2"):
        pmi_scores(tiny, prompts[:1], responses[:1])
