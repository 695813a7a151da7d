"""Generation throughput: mipo's hf backend (length-bucketed batches) vs a naive in-order loop.

Both sides use the built-in SmolLM2-135M-Instruct, the same prompts (chat prompts of varied
length, rendered with the model's own template), the same batch size, the same sampling settings
(the paper's temperature 0.1, top_p 0.9) and the same stop tokens. The baseline is what a user
would write by hand: cut the prompts into batches in their given order, left-pad each batch with
the tokenizer, call ``model.generate``. mipo sorts each chunk by prompt length before cutting
batches, so a batch carries little padding. Reported: new tokens per second, measured side by
side in one run, alternating the two so machine noise hits both.

Run:  python benches/bench_generate.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

QUICK = {"rows": 48, "batch_size": 8, "max_new_tokens": 12, "repeats": 1}
FULL = {"rows": 128, "batch_size": 16, "max_new_tokens": 48, "repeats": 2}
TARGET = 1.5

_TOPICS = [
    "how to plan meals for the week",
    "a beginner's running schedule",
    "how to learn a new language quickly",
    "ways to save money on groceries",
    "how to keep houseplants alive",
    "tips for sleeping better",
]
_FACTS = [
    "I work night shifts as a nurse and sleep during the day.",
    "I am vegetarian and allergic to peanuts.",
    "I live in a small apartment with two cats and no balcony.",
    "My budget is tight: I have about forty dollars a week for food.",
    "I prefer short answers with bullet points and no jargon.",
    "I am a retired teacher who enjoys gardening and long walks.",
    "I have a toddler and very little free time in the evenings.",
    "English is my second language, so please keep sentences simple.",
    "I already tried apps and they did not work for me.",
    "I travel for work two weeks every month.",
]


def build_prompts(tokenizer: Any, rows: int, seed: int = 0) -> list[list[int]]:
    """Chat prompts whose user context ranges from nothing to a long description (long tail)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(rows):
        n_facts = min(int(rng.expovariate(1 / 6)), 40)  # most short, a few very long
        context = " ".join(rng.choice(_FACTS) for _ in range(n_facts))
        question = f"Can you give me advice on {rng.choice(_TOPICS)}?"
        messages = [{"role": "user", "content": f"{context} {question}".strip()}]
        prompts.append(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    return prompts


def naive_generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    stop_ids: list[int],
) -> int:
    """The hand-written loop: batches in input order, tokenizer left padding. Returns new tokens."""
    import torch

    tokenizer.padding_side = "left"
    new_tokens = 0
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer.pad(
            {"input_ids": prompts[start : start + batch_size]}, return_tensors="pt"
        )
        with torch.inference_mode():
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=0.1,
                top_p=0.9,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            end = next((k for k, t in enumerate(row) if t in stop_ids), None)
            new_tokens += len(row) if end is None else end + 1
    return new_tokens


def compare(quick: bool = False) -> list[dict[str, Any]]:
    """Measure both sides; one dict per comparison (name, mipo_s, baseline, baseline_s, ...)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mipo.generate import GenerationConfig, request_seeds
    from mipo.generate.hf import HFBackend
    from mipo.models import resolve_model

    settings = QUICK if quick else FULL
    model = resolve_model(None)
    config = GenerationConfig(
        backend="hf",
        device="cpu",
        max_new_tokens=settings["max_new_tokens"],
        batch_size=settings["batch_size"],
        temperature=0.1,
        top_p=0.9,
    )
    backend = HFBackend(model, config)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    baseline_model = AutoModelForCausalLM.from_pretrained(
        model.path, dtype=torch.float32, **model.from_pretrained_kwargs()
    ).eval()
    prompts = build_prompts(tokenizer, settings["rows"])
    seeds = request_seeds(range(len(prompts)), 0)
    lengths = sorted(len(p) for p in prompts)
    torch.manual_seed(0)

    mipo_runs, base_runs = [], []
    for _ in range(settings["repeats"]):
        started = time.perf_counter()
        results = backend.generate(prompts, seeds)
        mipo_runs.append(
            (time.perf_counter() - started, sum(r.num_response_tokens for r in results))
        )
        started = time.perf_counter()
        tokens = naive_generate(
            baseline_model,
            tokenizer,
            prompts,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            stop_ids=backend.stop_ids,
        )
        base_runs.append((time.perf_counter() - started, tokens))

    mipo_rate = max(tokens / seconds for seconds, tokens in mipo_runs)
    base_rate = max(tokens / seconds for seconds, tokens in base_runs)
    mipo_s = min(seconds for seconds, _ in mipo_runs)
    base_s = min(seconds for seconds, _ in base_runs)
    notes = (
        f"SmolLM2-135M fp32 CPU, {len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens "
        f"(median {lengths[len(lengths) // 2]}), batch {config.batch_size}, "
        f"max_new_tokens {config.max_new_tokens}, T=0.1 top_p=0.9; "
        f"new tok/s mipo {mipo_rate:.1f} vs naive {base_rate:.1f}; "
        f"best of {settings['repeats']}"
    )
    return [
        {
            "name": "hf generation, new tokens/s (length-bucketed vs in-order batches)",
            "mipo_s": round(mipo_s, 3),
            "baseline": "transformers generate, in-order batches",
            "baseline_s": round(base_s, 3),
            "speedup": round(mipo_rate / base_rate, 2),
            "target": TARGET,
            "notes": notes,
        }
    ]


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| benchmark | mipo (s) | baseline | baseline (s) | speedup | target | notes |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['mipo_s']} | {r['baseline']} | {r['baseline_s']} | "
            f"{r['speedup']}x | >= {r['target']}x | {r['notes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    args = parser.parse_args()
    print(_table(compare(quick=args.quick)))


if __name__ == "__main__":
    main()
