"""Judged personalization: a local instruct model scores responses 1-5 against the user's context.

As in the paper, the judge rates how well a response serves *this* user's stated context (their
situation, constraints and preferences) while answering the question. The judge is asked for a
single digit and read from its next-token distribution restricted to the tokens "1".."5": the
score is the most probable digit (what constrained greedy decoding would answer, so no parsing
can fail), and the expected score under the renormalised digit distribution is kept as a finer
tie-breaker-free measure. When a digit is not a single token for the judge's tokenizer, the judge
generates a short answer instead and the first digit 1-5 in it is taken (:func:`parse_score`).

Win rate of model vs baseline is computed per prompt on the integer scores, ties counted as wins
(the paper's convention) and as half a win.

>>> parse_score("Score: 4/5")
4
>>> win_rates([5, 3, 2], [4, 3, 3])["win_rate_ties_as_wins"]
0.6666666666666666
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import polars as pl

from mipo.errors import InvalidInputError
from mipo.progress import track

__all__ = ["JUDGE_INSTRUCTIONS", "judge_scores", "parse_score", "win_rates"]

JUDGE_INSTRUCTIONS = (
    "You are a strict evaluator of personalized answers. Given a user's context, their question "
    "and an assistant's response, rate from 1 to 5 how well the response fits this specific user: "
    "it answers the question and respects their stated situation, constraints and preferences.\n"
    "1 = ignores the user or does not answer, 3 = generic but acceptable, "
    "5 = clearly tailored to this user and fully answers.\n"
    "Reply with a single digit from 1 to 5 and nothing else."
)

_DIGIT = re.compile(r"(?<!\d)[1-5](?!\d)")  # a lone digit: "10" is not a 1


def parse_score(text: str | None) -> int | None:
    """The first standalone digit 1-5 in a judge's reply, or None."""
    if not text:
        return None
    match = _DIGIT.search(text)
    return int(match.group()) if match else None


def _judge_messages(context: str, question: str, response: str) -> list[dict[str, str]]:
    body = (
        f"User context:\n{context.strip() or '(none stated)'}\n\n"
        f"Question:\n{question.strip()}\n\n"
        f"Response:\n{response.strip()}\n\n"
        "Rating (1-5):"
    )
    return [
        {"role": "system", "content": JUDGE_INSTRUCTIONS},
        {"role": "user", "content": body},
    ]


def _digit_token_ids(tokenizer: Any) -> list[int] | None:
    """The token ids of the digits 1-5, or None when a digit is not a single token."""
    ids = []
    for digit in "12345":
        encoded = tokenizer.encode(digit, add_special_tokens=False)
        if len(encoded) != 1:
            return None
        ids.append(encoded[0])
    return ids


def judge_scores(
    judge: Any,
    contexts: Sequence[str],
    questions: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 8,
    progress: str | None = None,
) -> pl.DataFrame:
    """Score each response: columns ``score`` (Int64, 1-5) and ``expected_score`` (Float64).

    ``judge`` is a loaded ``(model, tokenizer)`` pair (see :func:`mipo.models.load_model`).
    ``progress``: show the judging's progress (:mod:`mipo.progress`) under this name.

    >>> # needs a judge model: see tests/test_evaluate.py
    >>> judge_scores(load_model("judge"), ["vegan"], ["Dinner?"], ["Tofu stir-fry."])  # doctest: +SKIP
    """
    if not len(contexts) == len(questions) == len(responses):
        raise InvalidInputError("contexts, questions and responses must have equal lengths")
    model, tokenizer = judge
    prompts = [
        tokenizer.apply_chat_template(
            _judge_messages(c or "", q or "", r or ""),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        for c, q, r in zip(contexts, questions, responses, strict=True)
    ]
    digit_ids = _digit_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[int | None] = []
    expected: list[float | None] = []
    with track(progress or "", total=len(prompts), unit="response", enabled=bool(progress)) as task:
        for start in range(0, len(prompts), batch_size):
            rows = [list(p) for p in prompts[start : start + batch_size]]
            batch = _left_padded(rows, pad)
            if digit_ids is not None:
                batch_scores, batch_expected = _digit_scores(model, batch, digit_ids)
            else:
                batch_scores, batch_expected = _generated_scores(model, tokenizer, batch, pad)
            scores.extend(batch_scores)
            expected.extend(batch_expected)
            task.advance(len(rows))
    return pl.DataFrame(
        {"score": scores, "expected_score": expected},
        schema={"score": pl.Int64, "expected_score": pl.Float64},
    )


def _left_padded(rows: list[list[int]], pad: int) -> tuple[Any, Any, Any]:
    """``rows`` as one left-padded batch: token ids, attention mask and position ids.

    Left padding with explicit position ids: the next-token logits of every row sit in the last
    column, and positions match an unpadded run.
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def _digit_scores(
    model: Any, batch: tuple[Any, Any, Any], digit_ids: list[int]
) -> tuple[list[int], list[float]]:
    """Each row's most probable digit 1-5 as the next token, and the probability-weighted
    digit."""
    import torch

    ids, mask, positions = batch
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = (
            model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=False,
                logits_to_keep=1,
            )
            .logits[:, -1, :]
            .float()
        )
        probs = torch.softmax(logits[:, digit_ids], dim=-1)
        values = torch.arange(1, 6, dtype=probs.dtype, device=probs.device)
        return (probs.argmax(dim=-1) + 1).tolist(), (probs * values).sum(dim=-1).tolist()


def _generated_scores(
    model: Any, tokenizer: Any, batch: tuple[Any, Any, Any], pad: int
) -> tuple[list[int | None], list[float | None]]:
    """Each row's score parsed from a short greedy reply (for tokenizers whose digits are not
    single tokens); None where the reply holds no score."""
    import torch

    ids, mask, _ = batch
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=pad,
        )
    scores: list[int | None] = []
    expected: list[float | None] = []
    for tokens in out[:, ids.shape[1] :].tolist():
        value = parse_score(tokenizer.decode(tokens, skip_special_tokens=True))
        scores.append(value)
        expected.append(None if value is None else float(value))
    return scores, expected


def win_rates(
    model_scores: Sequence[int | None], baseline_scores: Sequence[int | None]
) -> dict[str, Any]:
    """Wins, ties, losses of model over baseline per prompt, and the two win-rate conventions.

    Rows where either score is missing are left out (counted in ``unscored``).
    """
    if len(model_scores) != len(baseline_scores):
        raise InvalidInputError("model and baseline scores must have equal lengths")
    wins = ties = losses = unscored = 0
    for m, b in zip(model_scores, baseline_scores, strict=True):
        if m is None or b is None:
            unscored += 1
        elif m > b:
            wins += 1
        elif m == b:
            ties += 1
        else:
            losses += 1
    n = wins + ties + losses
    nan = float("nan")
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "unscored": unscored,
        "n": n,
        "win_rate_ties_as_wins": (wins + ties) / n if n else nan,
        "win_rate_ties_as_half": (wins + 0.5 * ties) / n if n else nan,
    }
