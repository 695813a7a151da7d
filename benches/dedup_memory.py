"""Memory and time of streaming dedup on a big synthetic corpus (issue 5's target).

Streams ``--rows`` (default 5M) seeded ~50-word prompts (10% near copies, 5% exact copies of
earlier rows) through :class:`mipo.engine.Deduper` in chunks, as ``mipo`` does when reading a
big Parquet file batch by batch, and prints the wall time, the Deduper's state bytes, and the
peak RSS of the whole process (Python, Polars, one chunk of text, the engine state).

With ``--parquet CORPUS`` it streams a ``mipo synth`` corpus instead (the dedup text the plan
builds: context, newline, question; 65,536-row batches, as the plan reads it), which says how
much of the plan stage's peak RSS (``benches/scale.py``) is the dedup state.

Run: ``python benches/dedup_memory.py [--rows 5000000] [--chunk 500000] [--parquet CORPUS]``.
"""

from __future__ import annotations

import argparse
import random
import resource
import time


def chunks(rows: int, chunk: int, seed: int = 0):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(5000)})
    recent: list[str] = []  # earlier prompts to copy from (a sliding sample)
    produced = 0
    while produced < rows:
        out = []
        for _ in range(min(chunk, rows - produced)):
            r = rng.random()
            if recent and r < 0.05:
                out.append(rng.choice(recent))
            elif recent and r < 0.15:
                words = rng.choice(recent).split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                out.append(" ".join(words))
            else:
                text = " ".join(rng.choices(vocab, k=rng.randint(35, 65)))
                out.append(text)
                if len(recent) < 100_000:
                    recent.append(text)
                else:
                    recent[rng.randrange(len(recent))] = text
        produced += len(out)
        yield out


def synth_chunks(path: str, chunk: int):
    """The plan's dedup text of a synth corpus, pulled in ``chunk``-row batches."""
    import polars as pl
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(chunk, columns=["context", "question"]):
        frame = pl.from_arrow(batch)
        text = pl.concat_str([pl.col("context").fill_null(""), pl.col("question")], separator="\n")
        yield frame.select(text).to_series().to_list()


def main() -> None:
    import polars as pl

    from mipo import engine

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--chunk", type=int, default=500_000)
    ap.add_argument("--parquet", help="a mipo synth corpus to stream instead of generated text")
    args = ap.parse_args()
    source = synth_chunks(args.parquet, 65_536) if args.parquet else chunks(args.rows, args.chunk)
    d = engine.Deduper()
    engine_s = 0.0
    removed = 0
    t0 = time.perf_counter()
    for texts in source:
        column = pl.Series("prompt", texts)
        t1 = time.perf_counter()
        out = d.add(column)
        engine_s += time.perf_counter() - t1
        removed += int((~out["keep"]).sum())
    total_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"rows={d.rows_seen} kept={d.clusters} removed={removed} "
        f"engine_s={engine_s:.1f} total_s={total_s:.1f} (incl. generating the text) "
        f"state={d.state_bytes / 1e9:.2f} GB ({d.state_bytes / d.clusters:.0f} B/kept row) "
        f"peak_rss={peak / 1e9:.2f} GB threads={engine.engine_info()['threads']}"
    )


if __name__ == "__main__":
    main()
