"""Log-probabilities of responses under a causal language model, tokenized exactly as TRL's DPO.

``score_responses`` returns, for each (prompt messages, response) pair, the summed
log π(response | prompt) over the response tokens, the quantity DPO compares (summed, not averaged,
as in the paper). Tokenization mirrors ``trl.DPOTrainer`` on conversational data: the prompt is the
chat template with ``add_generation_prompt=True``; the response tokens are what the template adds
when the assistant message is appended (including the end-of-turn token), counted from the first
token where the two renderings diverge. So a margin computed here equals the one DPO optimizes.

The PMI helpers estimate the pointwise mutual information the method maximizes,
PMI(x, y) = log π(y|x) − log π(y), with π(y) = E_x' π(y|x') estimated from k *contrast* prompts x'
(other prompts drawn at random, the same question with other users' contexts, or the question
without its context) by the log of the mean probability (:func:`pmi_estimates`).

>>> # builds and scores with a model (loads torch, seconds): see tests/test_scoring.py
>>> from mipo._testing import build_tiny_model  # doctest: +SKIP
>>> path = build_tiny_model("/tmp/tiny")  # doctest: +SKIP
>>> prompts = [[{"role": "user", "content": "Hi"}]]  # doctest: +SKIP
>>> score_responses(path, prompts, ["Hello!"])["logprob"].dtype  # doctest: +SKIP
Float64
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
from collections.abc import Sequence
from typing import Any

import polars as pl

from mipo.errors import ConfigError, InvalidInputError, ModelError
from mipo.progress import track
from mipo.prompt_format import PromptFormat

__all__ = [
    "CONTRASTS",
    "ESTIMATORS",
    "ModelSpec",
    "contrast_contexts",
    "contrast_indices",
    "pmi_estimates",
    "pmi_scores",
    "score_responses",
    "tokenize_prompt_response",
]

logger = logging.getLogger(__name__)

# A model argument: a local folder, a name mipo.models resolves, or an already loaded pair.
ModelSpec = Any


# --- model arguments ---------------------------------------------------------------------------


def _as_loaded(model: ModelSpec, device: str | None, dtype: str = "auto") -> tuple[Any, Any]:
    """A ``(model, tokenizer)`` pair: the one given, or the one loaded from a path."""
    if isinstance(model, tuple) and len(model) == 2:
        return model
    if isinstance(model, str | os.PathLike):
        from mipo.models import load_model

        return load_model(model, device=device, dtype=dtype)
    raise ConfigError(
        f"model must be a path or a (model, tokenizer) pair, got {type(model).__name__}"
    )


# --- tokenization -----------------------------------------------------------------------------


def _messages_list(prompts: Any) -> list[list[dict[str, str]]]:
    """Prompts as Python lists of {role, content} dicts (from a list or a Polars List(Struct))."""
    if isinstance(prompts, pl.Series):
        prompts = prompts.to_list()
    out: list[list[dict[str, str]]] = []
    for i, messages in enumerate(prompts):
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list | tuple) or not messages:
            raise InvalidInputError(
                f"prompt {i} must be a non-empty list of {{role, content}} messages, got {messages!r}"
            )
        clean = []
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise InvalidInputError(
                    f"prompt {i} has a message without role/content: {m!r}; "
                    'messages look like {"role": "user", "content": "..."}'
                )
            clean.append({"role": str(m["role"]), "content": str(m["content"] or "")})
        out.append(clean)
    return out


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    # Same call as trl.data_utils._tokenize for conversational input.
    """The token ids of ``messages`` rendered with the chat template."""
    result = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    ids = result["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_prompt_response(
    tokenizer: Any, prompt: list[dict[str, str]], response: str
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` exactly as ``trl.DPOTrainer`` tokenizes conversational data.

    The response starts where the rendering of the prompt alone (with the generation prompt) and of
    prompt + assistant message diverge, which is usually right after the generation prompt; the
    template's end-of-turn tokens belong to the response, as in training.

    >>> # needs a model's tokenizer: see tests/test_scoring.py
    >>> prompt_ids, response_ids = tokenize_prompt_response(tok, [{"role": "user", "content": "Hi"}], "Yo")  # doctest: +SKIP
    """
    if tokenizer.chat_template is None:
        raise ModelError(
            "the tokenizer has no chat template; DPO on conversational pairs needs one "
            "(use an instruct model, or set tokenizer.chat_template)"
        )
    prompt_ids = _template_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _template_ids(tokenizer, [*prompt, {"role": "assistant", "content": response}])
    start = _common_prefix_length(prompt_ids, full_ids)
    return full_ids[:start], full_ids[start:]


# --- scoring ----------------------------------------------------------------------------------


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (project only the last positions)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _score_batch(
    model: Any, pad_id: int, items: list[tuple[list[int], list[int]]], device: str
) -> list[float]:
    """Summed log-probabilities of each item's response ids given its prompt ids."""
    import torch

    lengths = [len(p) + len(r) for p, r in items]
    width = max(lengths)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, (p, r) in enumerate(items):
        seq = p + r
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    # Right padding (as TRL's collator) keeps position ids 0..n-1 for every row. The logits that
    # predict response tokens sit at positions [len(prompt)-1, len(seq)-2]; asking the model for
    # just that window (logits_to_keep) avoids materializing batch x length x vocab logits.
    first = min(max(len(p) - 1, 0) for p, _ in items)
    last = width - 1  # exclusive: the final position predicts nothing we score
    kwargs: dict[str, Any] = {}
    offset = 0
    if _accepts_logits_to_keep(model) and first > 0:
        kwargs["logits_to_keep"] = torch.arange(first, last, device=device)
        offset = first
    with torch.inference_mode():
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            use_cache=False,
            **kwargs,
        )
        logits = out.logits
        totals: list[float] = []
        for row, (p, r) in enumerate(items):
            if not r:
                totals.append(0.0)
                continue
            start = len(p) - 1 - offset
            row_logits = logits[row, start : start + len(r)].float()
            targets = torch.tensor(r, dtype=torch.long, device=row_logits.device)
            # log-softmax row by row keeps the fp32 temporaries at length x vocab.
            logp = torch.log_softmax(row_logits, dim=-1).gather(1, targets[:, None]).sum()
            totals.append(float(logp))
    return totals


def score_responses(
    model: ModelSpec,
    prompts: Any,
    responses: Any,
    *,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "auto",
    progress: str | None = None,
) -> pl.DataFrame:
    """Summed log π(response | prompt) and the number of response tokens, one row per pair.

    ``model``: a model folder / name (loaded with ``device`` and ``dtype``), or an already
    loaded ``(model, tokenizer)`` pair (avoids a reload). ``prompts``: message lists (lists of {role, content} dicts, or a Polars
    List(Struct) Series; a plain string is taken as one user message). ``responses``: strings.
    Rows are scored in batches sorted by length (less padding), then returned in input order.
    ``progress``: show the scoring's progress (:mod:`mipo.progress`) under this name.

    >>> # needs a model folder: see tests/test_scoring.py
    >>> df = score_responses(model_dir, [[{"role": "user", "content": "2+2?"}]], ["4"])  # doctest: +SKIP
    >>> df.columns  # doctest: +SKIP
    ['logprob', 'num_tokens']
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    messages = _messages_list(prompts)
    if isinstance(responses, pl.Series):
        responses = responses.to_list()
    responses = ["" if r is None else str(r) for r in responses]
    if len(messages) != len(responses):
        raise InvalidInputError(
            f"got {len(messages)} prompts but {len(responses)} responses; pass one response per prompt"
        )
    if not messages:
        return pl.DataFrame(
            {"logprob": [], "num_tokens": []},
            schema={"logprob": pl.Float64, "num_tokens": pl.Int64},
        )
    lm, tokenizer = _as_loaded(model, device, dtype)
    device = str(next(lm.parameters()).device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    items = [
        tokenize_prompt_response(tokenizer, m, r) for m, r in zip(messages, responses, strict=True)
    ]
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    logprobs = [math.nan] * len(items)
    with track(progress or "", total=len(order), unit="sequence", enabled=bool(progress)) as task:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, value in zip(
                chunk, _score_batch(lm, pad_id, [items[i] for i in chunk], device), strict=True
            ):
                logprobs[i] = value
            task.advance(len(chunk))
    return pl.DataFrame(
        {"logprob": logprobs, "num_tokens": [len(r) for _, r in items]},
        schema={"logprob": pl.Float64, "num_tokens": pl.Int64},
    )


# --- PMI --------------------------------------------------------------------------------------

CONTRASTS = ("random", "same_question", "context_drop")
"""The contrast sets of :func:`pmi_scores`, in report order."""

ESTIMATORS = ("lme", "infonce", "mean_log")
"""How log π(y) is estimated from the contrast log-probabilities (see :func:`pmi_estimates`)."""


def pmi_estimates(logprob: float, contrast_logprobs: Sequence[float]) -> dict[str, float | None]:
    """The three PMI estimates of one response from log π(y|x) and log π(y|x'_j), j = 1..k.

    - ``lme`` (the headline): log π(y|x) − log (1/k) Σ_j π(y|x'_j), the plug-in estimate of
      log π(y|x) − log E_x' π(y|x') = PMI(x, y), computed stably (log-sum-exp);
    - ``infonce``: log π(y|x) − log (1/(k+1)) (π(y|x) + Σ_j π(y|x'_j)), the InfoNCE-style
      bounded estimate: never above log(k+1), however unlikely y is under every contrast;
    - ``mean_log``: log π(y|x) − (1/k) Σ_j log π(y|x'_j). By Jensen it is never below ``lme``
      and grows without bound as one π(y|x'_j) goes to 0 (one unlikely contrast inflates it):
      reported only as a labelled secondary.

    None for all three when there is no contrast.

    >>> est = pmi_estimates(-10.0, [-12.0, -14.0])
    >>> round(est["lme"], 4), round(est["infonce"], 4), est["mean_log"]
    (2.5662, 0.9557, 3.0)
    """
    values = [float(v) for v in contrast_logprobs]
    if not values:
        return {"lme": None, "infonce": None, "mean_log": None}
    return {
        "lme": logprob - _log_mean_exp(values),
        "infonce": logprob - _log_mean_exp([logprob, *values]),
        "mean_log": logprob - sum(values) / len(values),
    }


def _log_mean_exp(values: Sequence[float]) -> float:
    """log(mean(exp(values))), computed stably."""
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def contrast_indices(n: int, k: int, *, seed: int = 0) -> list[list[int]]:
    """For each of ``n`` prompts, ``k`` other prompt indices drawn uniformly without replacement
    (all others when fewer than ``k`` exist). Deterministic for a given seed.

    >>> [len(js) for js in contrast_indices(3, 5, seed=0)]
    [2, 2, 2]
    """
    if k < 1:
        raise ConfigError(f"k (contrast prompts per prompt) must be >= 1, got {k}")
    rng = random.Random(seed)
    out: list[list[int]] = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        out.append(sorted(rng.sample(others, min(k, len(others)))))
    return out


def contrast_contexts(
    contexts: Sequence[str | None],
    k: int,
    *,
    seed: int = 0,
    users: Sequence[Any] | None = None,
) -> list[list[str]]:
    """For each prompt with a context, ``k`` contexts of *other users* to ask its question with
    (the "same question, other user" contrast that isolates personalization).

    Drawn uniformly without replacement from the distinct non-empty contexts of the data, never
    the prompt's own context nor (with ``users``) a context of its own user; fewer than ``k``
    when fewer exist, none for a prompt without context.

    >>> contrast_contexts(["vegan", "runner", "vegan", ""], 4, seed=0)
    [['runner'], ['vegan'], ['runner'], []]
    """
    if k < 1:
        raise ConfigError(f"k (contrast prompts per prompt) must be >= 1, got {k}")
    if users is not None and len(users) != len(contexts):
        raise InvalidInputError("users must have one entry per prompt")
    owners: dict[str, set[Any]] = {}
    for i, c in enumerate(contexts):
        if c and c.strip():
            owners.setdefault(c, set()).add(users[i] if users is not None else None)
    pool = list(owners)
    rng = random.Random(seed)
    out: list[list[str]] = []
    for i, own in enumerate(contexts):
        if not own or not own.strip():
            out.append([])
            continue
        user = users[i] if users is not None else None
        candidates = [c for c in pool if c != own and (users is None or user not in owners[c])]
        out.append(rng.sample(candidates, min(k, len(candidates))))
    return out


def pmi_scores(
    model: ModelSpec,
    prompts: Any,
    responses: Any,
    *,
    k: int = 8,
    seed: int = 0,
    contexts: Sequence[str | None] | None = None,
    nocontext: Any = None,
    users: Sequence[Any] | None = None,
    batch_size: int = 8,
    device: str | None = None,
    prompt_format: PromptFormat | None = None,
    progress: str | None = None,
) -> pl.DataFrame:
    """Pointwise mutual information of each (prompt, response) under ``model`` (the reference).

    Three contrast sets x' (see :data:`CONTRASTS`):

    - ``random``: ``k`` other prompts of the data, drawn at random;
    - ``same_question`` (needs ``contexts`` and ``nocontext``): the prompt's own question
      (``nocontext``, its messages without the context) asked with ``k`` other users' contexts
      (:func:`contrast_contexts`), each put where ``prompt_format`` puts a context (the format
      the prompts were built with; default :data:`~mipo.prompt_format.DEFAULT_CONTEXT_FORMAT`):
      the pointwise dependence of y on *this user*, the question held fixed;
    - ``context_drop`` (same inputs): the question without any context, a single contrast:
      log π(y|c, q) − log π(y|q).

    Columns: ``logprob`` (log π(y|x)), ``num_tokens`` (response tokens), and per contrast set
    ``pmi_<set>`` (the log-mean-exp estimate, the headline), ``pmi_<set>_infonce`` (bounded by
    log(k+1)), ``pmi_<set>_mean_log`` (mean of logs, secondary) and ``num_contrasts_<set>``;
    nulls where a row has no contrast. Every contrast is scored in one batched pass (its
    progress shown under the name ``progress``, when given).

    >>> # needs a reference model and prompts: see tests/test_scoring.py
    >>> pmi_scores(ref_dir, prompts, responses, k=8, seed=0)["pmi_random"].mean()  # doctest: +SKIP
    """
    loaded = _as_loaded(model, device)
    messages = _messages_list(prompts)
    if isinstance(responses, pl.Series):
        responses = responses.to_list()
    responses = ["" if r is None else str(r) for r in responses]
    n = len(messages)
    if n < 2:
        raise InvalidInputError(f"PMI needs at least 2 prompts to contrast, got {n}")
    if len(responses) != n:
        raise InvalidInputError(f"got {n} prompts but {len(responses)} responses")
    sets = _contrast_sets(messages, k, seed, contexts, nocontext, users, prompt_format)
    base, num_tokens, per_set = _score_with_contrasts(
        loaded, messages, responses, sets, batch_size=batch_size, progress=progress
    )
    return _pmi_frame(base, num_tokens, per_set)


_ContrastSets = dict[str, list[list[list[dict[str, str]]]]]


def _contrast_sets(
    messages: list[list[dict[str, str]]],
    k: int,
    seed: int,
    contexts: Sequence[str | None] | None,
    nocontext: Any,
    users: Sequence[Any] | None,
    prompt_format: PromptFormat | None,
) -> _ContrastSets:
    """Each contrast set's prompts x' per row (see :func:`pmi_scores`): random other prompts
    and, with contexts, the question with other users' contexts and the question alone."""
    n = len(messages)
    sets: _ContrastSets = {
        "random": [[messages[j] for j in js] for js in contrast_indices(n, k, seed=seed)]
    }
    if contexts is not None:
        if nocontext is None or len(contexts) != n:
            raise InvalidInputError("contexts and nocontext must have one entry per prompt")
        bare = _messages_list(nocontext)
        drawn = contrast_contexts(contexts, k, seed=seed + 1, users=users)
        fmt = prompt_format or PromptFormat()
        sets["same_question"] = [
            [fmt.messages(c, bare[i]) for c in cs] for i, cs in enumerate(drawn)
        ]
        sets["context_drop"] = [[bare[i]] if (contexts[i] or "").strip() else [] for i in range(n)]
    return sets


def _score_with_contrasts(
    loaded: tuple[Any, Any],
    messages: list[list[dict[str, str]]],
    responses: list[str],
    sets: _ContrastSets,
    *,
    batch_size: int,
    progress: str | None,
) -> tuple[list[float], pl.Series, dict[str, list[list[float]]]]:
    """Score every response under its own prompt and under each of its contrasts, in one
    batched pass: (log π(y|x) per row, response tokens per row, per set the contrast
    log-probabilities per row)."""
    n = len(messages)
    flat_prompts: list[list[dict[str, str]]] = list(messages)
    flat_responses: list[str] = list(responses)
    owners: list[tuple[str, int]] = []
    for name, per_row in sets.items():
        for i, contrast in enumerate(per_row):
            for prompt in contrast:
                flat_prompts.append(prompt)
                flat_responses.append(responses[i])
                owners.append((name, i))
    scored = score_responses(
        loaded, flat_prompts, flat_responses, batch_size=batch_size, progress=progress
    )
    logprobs = scored["logprob"].to_list()
    per_set: dict[str, list[list[float]]] = {name: [[] for _ in range(n)] for name in sets}
    for (name, i), value in zip(owners, logprobs[n:], strict=True):
        per_set[name][i].append(value)
    return logprobs[:n], scored["num_tokens"].head(n), per_set


def _pmi_frame(
    base: list[float], num_tokens: pl.Series, per_set: dict[str, list[list[float]]]
) -> pl.DataFrame:
    """The columns of :func:`pmi_scores` from the scored log-probabilities."""
    columns: dict[str, pl.Series] = {
        "logprob": pl.Series("logprob", base, dtype=pl.Float64),
        "num_tokens": num_tokens,
    }
    for name, per_row in per_set.items():
        estimates = [pmi_estimates(base[i], values) for i, values in enumerate(per_row)]
        columns[f"pmi_{name}"] = pl.Series([e["lme"] for e in estimates], dtype=pl.Float64)
        for estimator in ESTIMATORS[1:]:
            columns[f"pmi_{name}_{estimator}"] = pl.Series(
                [e[estimator] for e in estimates], dtype=pl.Float64
            )
        columns[f"num_contrasts_{name}"] = pl.Series([len(v) for v in per_row], dtype=pl.Int64)
    return pl.DataFrame({name: s.alias(name) for name, s in columns.items()})
