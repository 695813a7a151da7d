"""Plan-stage throughput: ``mipo build-pairs --plan-only`` on synthetic rows, per step, against the
pipeline a user would otherwise write by hand.

mipo: :func:`mipo.pairs.plan.build_plan` — stream the Parquet corpus in batches, dedupe (engine exact +
MinHash/LSH), render + tokenize (engine), draw a user-constrained derangement (engine), write
``plan.parquet``. Time is broken down into read, dedup, tokenize, derange and write.

Baseline (same data, same run): Polars to read, datasketch ``MinHashLSH`` (same 112 permutations,
word 5-grams, threshold 0.8) plus a set of normalized texts for exact duplicates, transformers'
``apply_chat_template`` to render + tokenize, a numpy shuffle-until-no-fixed-point derangement
(without the user constraint, which it cannot do), Polars to write.

The corpus comes from :mod:`mipo.synth` (realistic personalization rows with planted exact and
near duplicates). The tokenizer is the built-in SmolLM2's when it has been converted, else the
tiny test model's.

Run:  python benches/bench_plan.py [--quick] [--rows N]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

QUICK = {"rows": 5_000, "baseline_rows": 2_000}
FULL = {"rows": 100_000, "baseline_rows": 10_000}


def _tokenizer_dir(tmp: Path) -> tuple[Path, str]:
    from mipo.models import BUILTIN_CACHE_NAME, cache_root

    builtin = cache_root() / BUILTIN_CACHE_NAME
    if (builtin / "tokenizer.json").is_file():
        return builtin, "SmolLM2-135M-Instruct"
    from mipo._testing import build_tiny_model

    return build_tiny_model(tmp / "tiny"), "tiny test model"


def _corpus(tmp: Path, rows: int) -> Path:
    from mipo.synth import SynthConfig, synth_frame

    path = tmp / f"corpus-{rows}.parquet"
    synth_frame(SynthConfig(rows=rows, seed=0)).write_parquet(path)
    return path


def run_mipo(corpus_path: Path, model_dir: Path, out: Path) -> dict[str, Any]:
    """One plan-stage run; returns seconds, rows/s, per-step seconds and counts."""
    from mipo import engine
    from mipo.corpus import open_corpus
    from mipo.pairs.plan import PlanConfig, build_plan

    tokenizer = engine.ChatTokenizer.from_pretrained(model_dir)
    corpus = open_corpus(corpus_path)
    start = time.perf_counter()
    stats = build_plan(corpus, tokenizer, out, PlanConfig(seed=0, max_prompt_tokens=4096))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": stats.rows_in,
        "rows_per_s": stats.rows_in / seconds,
        "steps": dict(stats.step_seconds),
        "planned": stats.prompts_planned,
        "duplicates": stats.exact_duplicates + stats.near_duplicates,
    }


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def run_baseline(corpus_path: Path, model_dir: Path, out: Path) -> dict[str, Any]:
    """The hand-written pipeline (see the module docstring); returns seconds and per-step time."""
    import numpy as np
    import polars as pl
    from datasketch import MinHash, MinHashLSH
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # loaded untimed, as mipo's is
    steps: dict[str, float] = {}
    start = time.perf_counter()
    t = time.perf_counter()
    frame = pl.read_parquet(corpus_path)
    contexts, questions = frame["context"].to_list(), frame["question"].to_list()
    steps["read"] = time.perf_counter() - t

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=112)
    seen: set[str] = set()
    keep = []
    for i, (c, q) in enumerate(zip(contexts, questions, strict=True)):
        text = _normalize(f"{c or ''}\n{q or ''}")
        if text in seen:
            continue
        words = text.split()
        shingles = {" ".join(words[j : j + 5]) for j in range(max(1, len(words) - 4))}
        sig = MinHash(num_perm=112, seed=0)
        sig.update_batch([s.encode() for s in shingles])
        if lsh.query(sig):
            continue
        lsh.insert(str(i), sig)
        seen.add(text)
        keep.append(i)
    steps["dedup"] = time.perf_counter() - t

    t = time.perf_counter()
    conversations = [
        ([{"role": "system", "content": contexts[i]}] if contexts[i] else [])
        + [{"role": "user", "content": questions[i]}]
        for i in keep
    ]
    ids = tokenizer.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    steps["tokenize"] = time.perf_counter() - t

    t = time.perf_counter()
    rng = np.random.default_rng(0)
    n = len(keep)
    while True:
        sigma = rng.permutation(n)
        if not (sigma == np.arange(n)).any():
            break
    steps["derange"] = time.perf_counter() - t

    t = time.perf_counter()
    pl.DataFrame(
        {"row": keep, "input_ids": ids, "negative_index": sigma},
        schema_overrides={"input_ids": pl.List(pl.UInt32)},
    ).write_parquet(out)
    steps["write"] = time.perf_counter() - t
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": frame.height,
        "rows_per_s": frame.height / seconds,
        "steps": steps,
    }


def compare(quick: bool = False, rows: int | None = None) -> list[dict]:
    """Rows for ``benches/compare.py``: the whole plan stage (mipo vs baseline, in rows/s, both
    on the same baseline-sized corpus), then mipo at full size with its per-step breakdown."""
    import resource

    sizes = dict(QUICK if quick else FULL)
    if rows is not None:
        sizes["rows"] = rows
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir, model_name = _tokenizer_dir(tmp)

        small = _corpus(tmp, sizes["baseline_rows"])
        mine = run_mipo(small, model_dir, tmp / "plan-small.parquet")
        theirs = run_baseline(small, model_dir, tmp / "baseline.parquet")
        results.append(
            {
                "name": f"plan stage, {mine['rows']:,} rows",
                "mipo_s": mine["seconds"],
                "baseline": "datasketch + transformers apply_chat_template + numpy",
                "baseline_s": theirs["seconds"],
                "speedup": theirs["seconds"] / mine["seconds"],
                "notes": (
                    f"{mine['rows_per_s']:,.0f} vs {theirs['rows_per_s']:,.0f} rows/s; tokenizer "
                    f"{model_name}; baseline steps: "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in theirs["steps"].items())
                ),
            }
        )

        big = _corpus(tmp, sizes["rows"])
        full = run_mipo(big, model_dir, tmp / "plan.parquet")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results.append(
            {
                "name": f"plan stage throughput, {full['rows']:,} synthetic rows",
                "mipo_s": full["seconds"],
                "notes": (
                    f"{full['rows_per_s']:,.0f} rows/s; {full['duplicates']:,} duplicates removed; "
                    f"process peak RSS {peak_mb:,.0f} MB"
                ),
            }
        )
        for step, seconds in full["steps"].items():
            results.append(
                {
                    "name": f"plan step: {step}, {full['rows']:,} rows",
                    "mipo_s": seconds,
                    "notes": f"{100 * seconds / full['seconds']:.0f}% of the stage",
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--rows", type=int, default=None, help="rows of the throughput run")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 2:
        parser.error(f"--rows must be >= 2, got {args.rows}")
    for row in compare(quick=args.quick, rows=args.rows):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
