"""Log-probabilities of responses under a causal language model, tokenized exactly as TRL's DPO.

``score_responses`` returns, for each (prompt messages, response) pair, the summed
log π(response | prompt) over the response tokens, the quantity DPO compares (summed, not averaged,
as in the paper). Tokenization mirrors ``trl.DPOTrainer`` on conversational data: the prompt is the
chat template with ``add_generation_prompt=True``; the response tokens are what the template adds
when the assistant message is appended (including the end-of-turn token), counted from the first
token where the two renderings diverge. So a margin computed here equals the one DPO optimizes.

The PMI helpers estimate the pointwise mutual information the method maximizes,
PMI(x, y) = log π(y|x) − log π(y), with π(y) estimated from k *contrast* prompts x' (other prompts
drawn at random, or other users asking the same question).

>>> from mipo._testing import build_tiny_model  # doctest: +SKIP
>>> path = build_tiny_model("/tmp/tiny")  # doctest: +SKIP
>>> prompts = [[{"role": "user", "content": "Hi"}]]  # doctest: +SKIP
>>> score_responses(path, prompts, ["Hello!"])["logprob"].dtype  # doctest: +SKIP
Float64
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from mipo.errors import ConfigError, InvalidInputError, ModelError

__all__ = [
    "ModelSpec",
    "contrast_indices",
    "load_model",
    "pmi_scores",
    "resolve_model_path",
    "score_responses",
    "tokenize_prompt_response",
    "unconditional_logprobs",
]

logger = logging.getLogger(__name__)

# A model argument: a local folder, a name mipo.models resolves, or an already loaded pair.
ModelSpec = Any

# Inside a `mipo train` output directory the trained weights live here (see mipo.train).
TRAINED_MODEL_SUBDIR = "model"


# --- model loading ----------------------------------------------------------------------------


def resolve_model_path(
    spec: str | os.PathLike[str], *, trust_remote_code: bool = False, allow_pickle: bool = False
) -> Path:
    """A model argument as a checked local folder.

    Accepts a ``mipo train`` output directory (its ``model/`` subfolder is used), a LoRA adapter
    folder (``adapter_config.json``; its base model is resolved when loading), or anything
    :func:`mipo.models.resolve_model` understands: a model folder, a ``.gguf`` file, a hub id, the
    built-in ``smollm2-135m``.

    >>> resolve_model_path("runs/train1")  # doctest: +SKIP
    PosixPath('runs/train1/model')
    """
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").exists():
        if not (path / "adapter_config.json").exists() and (path / TRAINED_MODEL_SUBDIR).is_dir():
            path = path / TRAINED_MODEL_SUBDIR
        if (path / "adapter_config.json").exists():
            # An adapter is weights too: the same pickle rule as a full model folder.
            _check_adapter_weights(path, allow_pickle=allow_pickle)
            return path
    from mipo.models import resolve_model

    return Path(
        resolve_model(
            str(path) if path.exists() else str(spec),
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        ).path
    )


def _check_adapter_weights(path: Path, *, allow_pickle: bool) -> None:
    """Refuse a LoRA adapter folder whose weights exist only as pickle (``adapter_model.bin``):
    loading it unpickles arbitrary objects. With safetensors present PEFT loads those instead."""
    from mipo.models import PICKLE_WEIGHT_SUFFIXES

    files = [p for p in path.rglob("*") if p.is_file()]
    if any(p.name.endswith(".safetensors") for p in files):
        return
    pickles = [p for p in files if p.name.endswith(PICKLE_WEIGHT_SUFFIXES)]
    if not pickles:
        raise ModelError(
            f"adapter folder '{path}' holds no adapter weights (adapter_model.safetensors): pass "
            "a complete adapter folder saved with save_pretrained"
        )
    if not allow_pickle:
        raise ModelError(
            f"adapter '{path}' has only pickle weights ({pickles[0].name}); loading pickle can "
            "execute arbitrary code: convert them to safetensors, or pass --allow-pickle if you "
            "trust the source"
        )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype_for(device: str) -> Any:
    import torch

    # fp32 on CPU: bf16 matmuls there are slow and the log-prob sums lose precision; bf16 on a GPU
    # that supports it, with the log-softmax itself done in fp32 (see _score_batch).
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for scoring or generation, in eval mode, gradients off.

    A LoRA adapter folder (``adapter_config.json``) is loaded onto its base model and merged, so
    callers always get a plain causal LM. Pickle weights (``.bin``, model or adapter) load only
    with ``allow_pickle=True``; otherwise they are refused, and never read beside safetensors.

    >>> model, tokenizer = load_model("path/to/model")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    flags = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    # Without --allow-pickle, transformers must not fall back to a .bin beside the safetensors.
    weights = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        weights["use_safetensors"] = True
    path = resolve_model_path(spec, **flags)
    device = device or _default_device()
    dtype = _dtype_for(device)
    try:
        if (path / "adapter_config.json").exists():
            from peft import PeftModel

            adapter_config = json.loads((path / "adapter_config.json").read_text())
            base_spec = adapter_config.get("base_model_name_or_path")
            if not base_spec:
                raise ModelError(
                    f"{path / 'adapter_config.json'} names no base model; "
                    "set base_model_name_or_path to the model the adapter was trained on"
                )
            base_path = resolve_model_path(base_spec, **flags)
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, **weights)
            model = PeftModel.from_pretrained(base, path).merge_and_unload()
            tokenizer_path = path if (path / "tokenizer_config.json").exists() else base_path
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **weights)
            tokenizer_path = path
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_path, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model from {path}: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def _as_loaded(model: ModelSpec, device: str | None) -> tuple[Any, Any]:
    if isinstance(model, tuple) and len(model) == 2:
        return model
    if isinstance(model, str | os.PathLike):
        return load_model(model, device=device)
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
    result = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    ids = result["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
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
) -> pl.DataFrame:
    """Summed log π(response | prompt) and the number of response tokens, one row per pair.

    ``model``: a model folder / name, or an already loaded ``(model, tokenizer)`` pair (avoids a
    reload). ``prompts``: message lists (lists of {role, content} dicts, or a Polars
    List(Struct) Series; a plain string is taken as one user message). ``responses``: strings.
    Rows are scored in batches sorted by length (less padding), then returned in input order.

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
    lm, tokenizer = _as_loaded(model, device)
    device = str(next(lm.parameters()).device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    items = [
        tokenize_prompt_response(tokenizer, m, r) for m, r in zip(messages, responses, strict=True)
    ]
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    logprobs = [math.nan] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, value in zip(
            chunk, _score_batch(lm, pad_id, [items[i] for i in chunk], device), strict=True
        ):
            logprobs[i] = value
    return pl.DataFrame(
        {"logprob": logprobs, "num_tokens": [len(r) for _, r in items]},
        schema={"logprob": pl.Float64, "num_tokens": pl.Int64},
    )


# --- PMI --------------------------------------------------------------------------------------


def contrast_indices(
    n: int,
    k: int,
    *,
    seed: int = 0,
    questions: Sequence[Any] | None = None,
    users: Sequence[Any] | None = None,
) -> list[list[int]]:
    """For each of ``n`` prompts, up to ``k`` other prompt indices to contrast it with.

    Without ``questions``: ``k`` distinct indices other than i, uniformly at random (fewer when
    n - 1 < k). With ``questions`` (and optionally ``users``): only prompts with the same question
    and, when ``users`` is given, from a different user; rows with no such prompt get ``[]``.
    Deterministic for a given seed.

    >>> contrast_indices(4, 2, seed=0)  # doctest: +SKIP
    [[2, 3], [0, 2], [1, 3], [0, 1]]
    """
    if k < 1:
        raise ConfigError(f"k (contrast prompts per prompt) must be >= 1, got {k}")
    rng = random.Random(seed)
    out: list[list[int]] = []
    if questions is None:
        for i in range(n):
            others = [j for j in range(n) if j != i]
            out.append(sorted(rng.sample(others, min(k, len(others)))))
        return out
    if len(questions) != n or (users is not None and len(users) != n):
        raise InvalidInputError("questions and users must have one entry per prompt")
    by_question: dict[Any, list[int]] = {}
    for j, q in enumerate(questions):
        by_question.setdefault(q, []).append(j)
    for i in range(n):
        candidates = [
            j
            for j in by_question[questions[i]]
            if j != i and (users is None or users[j] != users[i])
        ]
        out.append(sorted(rng.sample(candidates, min(k, len(candidates)))))
    return out


def unconditional_logprobs(
    model: ModelSpec,
    prompts: Any,
    responses: Any,
    contrasts: list[list[int]],
    *,
    batch_size: int = 8,
    device: str | None = None,
) -> pl.DataFrame:
    """Estimate log π(y_i) from the contrast prompts: log π(y_i | x'_j) for j in ``contrasts[i]``.

    Returns ``mean_logprob`` (mean of the logs: the estimator the PMI report uses, as specified),
    ``lme_logprob`` (log of the mean probability, the plug-in estimate of log E_x' π(y|x'), which
    is ≥ the mean of logs by Jensen) and ``num_contrasts``; nulls where a row has no contrasts.
    """
    messages = _messages_list(prompts)
    if isinstance(responses, pl.Series):
        responses = responses.to_list()
    flat_prompts, flat_responses, owner = [], [], []
    for i, js in enumerate(contrasts):
        for j in js:
            flat_prompts.append(messages[j])
            flat_responses.append(responses[i])
            owner.append(i)
    scores = score_responses(
        model, flat_prompts, flat_responses, batch_size=batch_size, device=device
    )["logprob"].to_list()
    per_row: list[list[float]] = [[] for _ in contrasts]
    for i, s in zip(owner, scores, strict=True):
        per_row[i].append(s)
    mean_lp: list[float | None] = []
    lme_lp: list[float | None] = []
    for values in per_row:
        if not values:
            mean_lp.append(None)
            lme_lp.append(None)
            continue
        mean_lp.append(sum(values) / len(values))
        top = max(values)
        lme_lp.append(top + math.log(sum(math.exp(v - top) for v in values) / len(values)))
    return pl.DataFrame(
        {
            "mean_logprob": mean_lp,
            "lme_logprob": lme_lp,
            "num_contrasts": [len(v) for v in per_row],
        },
        schema={"mean_logprob": pl.Float64, "lme_logprob": pl.Float64, "num_contrasts": pl.Int64},
    )


def pmi_scores(
    model: ModelSpec,
    prompts: Any,
    responses: Any,
    *,
    k: int = 4,
    seed: int = 0,
    questions: Sequence[Any] | None = None,
    users: Sequence[Any] | None = None,
    batch_size: int = 8,
    device: str | None = None,
) -> pl.DataFrame:
    """Pointwise mutual information of each (prompt, response) under ``model`` (the reference).

    Columns: ``logprob`` (log π(y|x)), ``num_tokens``, ``pmi_random`` = logprob − mean over k
    random other prompts x' of log π(y|x'), ``pmi_random_lme`` (same with the log-mean-exp
    estimate of log π(y)), and, when ``questions`` is given, ``pmi_same_question`` /
    ``pmi_same_question_lme`` with x' from other users asking the same question (null where
    there is none).

    >>> pmi_scores(ref_dir, prompts, responses, k=4, seed=0)["pmi_random"].mean()  # doctest: +SKIP
    """
    loaded = _as_loaded(model, device)
    messages = _messages_list(prompts)
    if isinstance(responses, pl.Series):
        responses = responses.to_list()
    n = len(messages)
    if n < 2:
        raise InvalidInputError(f"PMI needs at least 2 prompts to contrast, got {n}")
    base = score_responses(loaded, messages, responses, batch_size=batch_size)
    columns: dict[str, pl.Series] = {
        "logprob": base["logprob"],
        "num_tokens": base["num_tokens"],
    }
    kinds: list[tuple[str, list[list[int]]]] = [("random", contrast_indices(n, k, seed=seed))]
    if questions is not None:
        kinds.append(
            ("same_question", contrast_indices(n, k, seed=seed, questions=questions, users=users))
        )
    for name, contrasts in kinds:
        unc = unconditional_logprobs(loaded, messages, responses, contrasts, batch_size=batch_size)
        columns[f"pmi_{name}"] = base["logprob"] - unc["mean_logprob"]
        columns[f"pmi_{name}_lme"] = base["logprob"] - unc["lme_logprob"]
        columns[f"num_contrasts_{name}"] = unc["num_contrasts"]
    return pl.DataFrame({name: s.alias(name) for name, s in columns.items()})
