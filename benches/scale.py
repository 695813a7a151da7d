"""Plan-stage scaling: ``mipo build-pairs --plan-only`` on 100k ... 5M synthetic rows (issue 5).

For every size the corpus comes from ``mipo synth`` (realistic personalization rows, planted exact
and near duplicates with ground truth in ``dup_of`` / ``dup_kind``; generated once per size and
cached in ``--workdir``, not timed). Then the real command runs as a subprocess, exactly as a user
runs it::

    mipo build-pairs CORPUS -o OUT --plan-only --model smollm2-135m --no-progress

and the script records its wall time, its CPU time and peak RSS (``os.wait4`` on that one child,
so nothing else on the machine counts), the per-step seconds the plan writes to
``OUT/stats.json`` (read, dedup, tokenize, derange, write) and the dedup quality against the
planted truth: a planted duplicate is *found* when ``plan.parquet`` does not keep its id
(recall); an original that is not kept is a *false positive* (precision). Originals dropped as
near duplicates are then checked against the dedup threshold (word 5-gram Jaccard of the
normalized texts, the pure-Python reference in :mod:`mipo._reference`): synth writes templated
text, so two originals can genuinely be near-identical, and such a drop is right, not an error.

Three probes explain the numbers, each measured side by side in one run:

- *tokenize*: CPU per token of the engine's ``encode_chat``, HF tokenizers' ``encode_batch`` and a
  pure-Python pre-token cache, ids checked equal (where the plan's time goes);
- *read-ahead*: RSS of Polars' ``collect_batches`` vs a pull reader while the consumer is busy
  (where the plan's memory beyond its compact state goes);
- *dedup ratios at 1M rows*: mipo vs rensa on ``benches/compare_dedup.py``'s planted corpus
  (datasketch, a pure-Python loop, only at 100k rows: at 1M it would take hours here).

A size measured twice (e.g. once under heavy load) can be kept by renaming its key in
``scale-results.json`` to ``"ROWS@LOAD"``; the targets are judged on the least-loaded run.

Writes ``benches/scale.png`` (time and peak RSS vs rows, with least-squares lines) and the
"Plan-stage scaling" section of ``benches/RESULTS.md`` (between ``<!-- scale:begin -->`` and
``<!-- scale:end -->``; the rest of the file is kept). Measurements are kept in
``WORKDIR/scale-results.json``, so ``--render-only`` redraws the table without rerunning.

Run::

    python benches/scale.py --quick                 # 100k and 500k rows
    python benches/scale.py                         # 100k, 500k, 1M, 2M, 5M + probes (1-2 h)
    python benches/scale.py --sizes 1M,2M --no-compare --readahead-rows 0
    python benches/scale.py --render-only           # redraw table + plot from the stored runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from results_md import RESULTS as RESULTS_MD
from results_md import cpu_name, replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PLOT = HERE / "scale.png"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
FULL_SIZES = (100_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)
QUICK_SIZES = (100_000, 500_000)
# (rows, wall seconds, peak RSS GB) the plan stage must stay within on this 2-core machine.
TARGETS = ((5_000_000, 360.0, 3.0), (10_000_000, 720.0, 5.0))
TARGET_PRECISION, TARGET_RECALL = 0.99, 0.95
PLAN_STEPS = ("read", "dedup", "tokenize", "derange", "write")
MIPO = Path(sys.executable).with_name("mipo")


def parse_rows(text: str) -> int:
    """``"500k"`` -> 500000, ``"2M"`` -> 2000000, ``"1500"`` -> 1500."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a row count: {text!r} (e.g. 500k, 2M, 1500)")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def human_rows(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


# --- one size --------------------------------------------------------------------------------


def make_corpus(rows: int, seed: int, workdir: Path) -> Path:
    """``mipo synth`` once per (rows, seed); a cached file is reused."""
    import pyarrow.parquet as pq

    path = workdir / f"corpus-{rows}-s{seed}.parquet"
    if path.is_file() and pq.read_metadata(path).num_rows == rows:
        return path
    start = time.perf_counter()
    subprocess.run(
        [str(MIPO), "synth", "--rows", str(rows), "--seed", str(seed), "-o", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"  synth {human_rows(rows)}: {time.perf_counter() - start:.0f} s", flush=True)
    return path


def run_plan(corpus: Path, out: Path, model: str) -> dict[str, Any]:
    """Run ``mipo build-pairs --plan-only`` as a child; wall/CPU seconds and its own peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(MIPO), "build-pairs", str(corpus), "-o", str(out), "--plan-only"]
    cmd += ["--model", model, "--no-progress"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 gives the rusage of this child alone (RUSAGE_CHILDREN would mix in the synth runs).
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}): {stderr[-2000:]}")
    stats = json.loads((out / "stats.json").read_text())
    plan = stats["plan"]
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # ru_maxrss is KiB on Linux
        "plan_s": stats["stages"]["plan"]["seconds"],
        "steps": {k: plan["step_seconds"].get(k, 0.0) for k in PLAN_STEPS},
        "counts": {
            k: plan[k]
            for k in (
                "rows_in",
                "empty_dropped",
                "exact_duplicates",
                "near_duplicates",
                "over_length",
                "prompts_planned",
                "users",
            )
        },
        "plan_bytes": (out / "plan.parquet").stat().st_size,
        "load_avg": round((load_before + os.getloadavg()[0]) / 2, 1),
    }


def dedup_texts(frame: Any) -> Any:
    """The text the plan deduplicates (``mipo.corpus``: context, newline, question)."""
    import polars as pl

    return frame.select(
        pl.concat_str([pl.col("context").fill_null(""), pl.col("question")], separator="\n")
    ).to_series()


def quality(corpus: Path, plan: Path, check_limit: int = 2_000) -> dict[str, Any]:
    """Precision and recall of dedup on the planted duplicates of ``corpus``.

    Originals dropped (false positives by the planted truth) are re-checked, up to
    ``check_limit`` of them, to tell a dedup error from two originals that synth happened to
    write near-identically (see :func:`_check_dropped_originals`).
    """
    import polars as pl

    kept = pl.scan_parquet(plan).select("id").collect()["id"]
    truth = (
        pl.scan_parquet(corpus)
        .select("id", "dup_kind")
        .collect()
        .with_columns(pl.col("id").is_in(kept.implode()).alias("kept"))
    )
    del kept
    dup = pl.col("dup_kind").is_not_null()
    counts = truth.select(
        planted=dup.sum(),
        found=(dup & ~pl.col("kept")).sum(),
        exact=(pl.col("dup_kind") == "exact").sum(),
        exact_found=((pl.col("dup_kind") == "exact") & ~pl.col("kept")).sum(),
        near=(pl.col("dup_kind") == "near").sum(),
        near_found=((pl.col("dup_kind") == "near") & ~pl.col("kept")).sum(),
        originals_dropped=(~dup & ~pl.col("kept")).sum(),
    ).row(0, named=True)
    tp, fp = counts["found"], counts["originals_dropped"]
    result: dict[str, Any] = dict(counts)
    result["precision"] = tp / (tp + fp) if tp + fp else 1.0
    result["recall"] = tp / counts["planted"] if counts["planted"] else 1.0
    result["recall_exact"] = counts["exact_found"] / counts["exact"] if counts["exact"] else 1.0
    result["recall_near"] = counts["near_found"] / counts["near"] if counts["near"] else 1.0
    if fp:
        result.update(_check_dropped_originals(corpus, truth, check_limit))
    return result


def _check_dropped_originals(corpus: Path, truth: Any, limit: int) -> dict[str, Any]:
    """Whether dropped originals really are near duplicates of the row dedup matched them to.

    The streaming deduplicator is rerun (in this process, not timed) up to the last checked row
    to learn each dropped row's cluster (the kept row it matched); the pair is then re-measured
    with the pure-Python reference normalization and exact word 5-gram sets (no MinHash, no
    32-bit fingerprints).
    """
    import polars as pl

    from mipo import engine
    from mipo._reference import normalize_text

    dropped = (
        truth.with_row_index("pos")
        .filter(pl.col("dup_kind").is_null() & ~pl.col("kept"))
        .head(limit)["pos"]
        .to_list()
    )
    wanted, last = set(dropped), max(dropped)
    match: dict[int, int] = {}
    deduper = engine.Deduper()
    lazy = pl.scan_parquet(corpus).select("context", "question")
    for start in range(0, last + 1, 500_000):
        chunk = lazy.slice(start, min(500_000, last + 1 - start)).collect()
        clusters = deduper.add(dedup_texts(chunk))["cluster"].to_list()
        for i, cluster in enumerate(clusters):
            if start + i in wanted:
                match[start + i] = int(cluster)
    needed = sorted(wanted | set(match.values()))
    texts = dict(
        zip(
            needed,
            dedup_texts(
                lazy.with_row_index("pos").filter(pl.col("pos").is_in(needed)).collect()
            ).to_list(),
            strict=True,
        )
    )

    def shingles(text: str) -> set[str]:
        words = normalize_text(text).split(" ")
        if len(words) < 5:
            return {" ".join(words)}
        return {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}

    similarity = []
    for pos in dropped:
        mine, theirs = shingles(texts[pos]), shingles(texts[match[pos]])
        similarity.append(len(mine & theirs) / len(mine | theirs))
    return {
        "dropped_checked": len(similarity),
        "dropped_confirmed": sum(x >= 0.8 for x in similarity),
        "dropped_min_jaccard": min(similarity),
    }


# --- the 1M-row engine ratios -------------------------------------------------------------------


def engine_ratios(rows: int, datasketch_rows: int) -> list[dict[str, Any]]:
    """mipo vs rensa at ``rows``; mipo vs datasketch at ``datasketch_rows`` (same run)."""
    sys.path.insert(0, str(HERE))
    import compare_dedup

    out = []
    for n, baselines in ((rows, ("rensa",)), (datasketch_rows, ("datasketch",))):
        if n <= 0:
            continue
        print(f"  dedup engine ratio at {human_rows(n)} rows vs {baselines}", flush=True)
        out += compare_dedup.compare(rows=n, baselines=baselines)
    return out


# --- read-ahead of the corpus reader ---------------------------------------------------------------

_READAHEAD_CODE = """
import sys, time
import polars as pl
from mipo.corpus import open_corpus
path, how, idle = sys.argv[1], sys.argv[2], float(sys.argv[3])
corpus = open_corpus(path)
wanted = ["row", "id", "prompt", "prompt_nocontext", "has_context", "dedup_text", "is_empty",
          "bad_message", "user_id"]
if how == "polars":  # Polars' streaming collect_batches of the whole scan
    batches = corpus.batches(corpus.standardized(wanted), 65536)
else:  # what the plan uses: mipo.corpus pulls one Parquet slice per batch
    batches = corpus.standardized_batches(wanted, 65536)
next(batches)
time.sleep(idle)  # the consumer is busy (tokenizing) while the reader may run ahead
status = open("/proc/self/status").read()
print(int(status.split("VmRSS:")[1].split()[0]) * 1024 / 1e9)
"""


def readahead_probe(corpus: Path, idle_s: float = 45.0) -> dict[str, Any]:
    """RSS (GB) of a reader whose consumer is busy for ``idle_s`` after the first batch.

    The plan stage tokenizes far slower than Polars decodes; if the reader runs ahead, the
    decoded batches pile up in memory (growing with the corpus text, not its compact state).
    Compares Polars' ``collect_batches`` with the pull reader the plan uses
    (``Corpus.standardized_batches``: one Parquet slice per batch).
    """
    out: dict[str, Any] = {"idle_s": idle_s}
    for how in ("polars", "pull"):
        done = subprocess.run(
            [sys.executable, "-c", _READAHEAD_CODE, str(corpus), how, str(idle_s)],
            check=True,
            capture_output=True,
            text=True,
        )
        out[f"{how}_rss_gb"] = float(done.stdout.strip().splitlines()[-1])
    return out


# --- where tokenize time goes ---------------------------------------------------------------------

# GPT-2's pre-tokenizer pattern (the ByteLevel pre-tokenizer of SmolLM2's tokenizer.json).
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tokenize_probe(corpus: Path, rows: int) -> dict[str, Any]:
    """CPU seconds per 1M tokens of four encoders on the same ``rows`` prompts (one run).

    1. the engine's ``encode_chat`` (minijinja render + the engine's pre-token cache);
    2. the same with ``pretoken_cache=False`` (render + the tokenizers crate);
    3. HF tokenizers' ``encode_batch`` on the rendered strings (the crate the engine wraps);
    4. a pure-Python pre-token cache: split with the pre-tokenizer's regex, look each piece up
       in a dict, encode only unseen pieces with HF tokenizers (what the engine's cache does,
       in Python). All four must give identical ids (checked here).
    """
    import regex
    from tokenizers import Tokenizer

    from mipo import engine
    from mipo.corpus import open_corpus
    from mipo.models import resolve_model

    model_dir = resolve_model(None).path
    tok = engine.ChatTokenizer.from_pretrained(model_dir)
    hf = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    messages = open_corpus(corpus).standardized(["prompt"]).head(rows).collect()["prompt"]
    texts = tok.render(messages).to_list()

    def cpu(fn: Any) -> tuple[float, Any]:
        start = time.process_time()
        out = fn()
        return time.process_time() - start, out

    crate_tok = engine.ChatTokenizer.from_pretrained(model_dir, pretoken_cache=False)
    engine_s, encoded = cpu(lambda: tok.encode_chat(messages))
    engine_ids = encoded["input_ids"].to_list()
    crate_s, crate_out = cpu(lambda: crate_tok.encode_chat(messages))
    hf_s, hf_out = cpu(lambda: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)])
    split = regex.compile(_GPT2_SPLIT)
    special = regex.compile("(" + "|".join(regex.escape(t) for t in _special_tokens(hf)) + ")")

    def cached() -> list[list[int]]:
        cache: dict[str, list[int]] = {}
        out = []
        for text in texts:
            ids: list[int] = []
            for i, part in enumerate(special.split(text)):
                if i % 2:  # an added/special token: one id
                    ids.append(hf.token_to_id(part))
                    continue
                for piece in split.findall(part):
                    hit = cache.get(piece)
                    if hit is None:
                        hit = cache[piece] = hf.encode(piece, add_special_tokens=False).ids
                    ids.extend(hit)
            out.append(ids)
        return out

    cache_s, cache_ids = cpu(cached)
    tokens = sum(len(x) for x in engine_ids)
    return {
        "rows": rows,
        "tokens": tokens,
        "engine_cpu_s": engine_s,
        "crate_cpu_s": crate_s,
        "crate_equal": crate_out["input_ids"].to_list() == engine_ids,
        "hf_cpu_s": hf_s,
        "cache_cpu_s": cache_s,
        "hf_equal": hf_out == engine_ids,
        "cache_equal": cache_ids == engine_ids,
        "threads": engine.engine_info()["threads"],
    }


def _special_tokens(hf: Any) -> list[str]:
    added = hf.get_added_tokens_decoder()
    return sorted((t.content for t in added.values()), key=len, reverse=True)


# --- reporting -------------------------------------------------------------------------------


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x``; returns ``(a, b)``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return my, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] for r in runs]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, series, unit in (
        (ax_t, (("wall_s", "wall"), ("cpu_s", "CPU (user+sys)")), "seconds"),
        (ax_m, (("peak_rss_gb", "peak RSS"),), "GB"),
    ):
        for key, label in series:
            ys = [r[key] for r in runs]
            a, b = linear_fit(rows, ys)
            ax.plot(rows, ys, "o", label=label)
            low, high = min(rows) * 0.8, max(rows) * 1.25
            grid = [low * (high / low) ** (i / 49) for i in range(50)]  # an affine fit curves
            ax.plot(grid, [a + b * x for x in grid], "--", lw=1, label=f"{label} fit")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("corpus rows")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_title("mipo build-pairs --plan-only: time")
    ax_m.set_title("peak RSS of the process")
    for target_rows, seconds, gb in TARGETS:
        if len(runs) and max(rows) >= target_rows:
            ax_t.plot([target_rows], [seconds], "rv", ms=6, alpha=0.6)
            ax_m.plot([target_rows], [gb], "rv", ms=6, alpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:,.0f}"


def render(data: dict[str, Any]) -> str:
    runs = sorted(data["runs"].values(), key=lambda r: (r["rows"], r["load_avg"]))
    lines = [
        BEGIN,
        "## Plan-stage scaling",
        "",
        f"`python benches/scale.py` — last run {data['date']} on {data['machine']}; each size "
        "is the run kept in `scale-results.json`, which may come from an earlier invocation; "
        "the load average when each run started is in the table (other jobs share this machine, "
        "so a "
        "wall time under load is an upper bound; CPU time is the steadier figure).",
        "",
        "| rows | wall s | rows/s | CPU s | peak RSS GB | read | dedup | tokenize | derange | "
        "write | precision | recall (exact / near) | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        s, q = r["steps"], r["quality"]
        lines.append(
            f"| {human_rows(r['rows'])} | {r['wall_s']:.1f} | {r['rows'] / r['wall_s']:,.0f} "
            f"| {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} | "
            + " | ".join(f"{s[k]:.1f}" for k in PLAN_STEPS)
            + f" | {q['precision']:.4f} | {q['recall']:.4f} ({q['recall_exact']:.4f} / "
            f"{q['recall_near']:.4f}) | {r['load_avg']} |"
        )
    lines += ["", "![plan-stage time and memory vs rows](scale.png)", ""]
    lines += data.get("notes", [])
    probe = data.get("tokenize")
    if probe:
        keys = ("engine_cpu_s", "crate_cpu_s", "hf_cpu_s", "cache_cpu_s")
        per_m = {k: probe[k] / probe["tokens"] * 1e6 for k in keys if k in probe}
        lines += [
            "",
            "### Where tokenize time goes",
            "",
            f"CPU seconds per 1M tokens on {human_rows(probe['rows'])} synth prompts "
            f"({probe['tokens']:,} tokens, SmolLM2's byte-level BPE), measured side by side "
            "(`tokenize_probe` in `benches/scale.py`):",
            "",
            "| encoder | CPU s / 1M tokens | ids equal to the engine's |",
            "|---|---:|---|",
            f"| engine `encode_chat` (render + pre-token cache, {probe['threads']} threads) | "
            f"{per_m['engine_cpu_s']:.2f} | - |",
            f"| engine `encode_chat`, `pretoken_cache=False` (render + tokenizers crate) | "
            f"{per_m['crate_cpu_s']:.2f} | {probe['crate_equal']} |",
            f"| HF tokenizers `encode_batch` (rendered text) | {per_m['hf_cpu_s']:.2f} | "
            f"{probe['hf_equal']} |",
            "| pure Python: pre-tokenizer regex + dict cache of piece ids, HF only for unseen "
            f"pieces | {per_m['cache_cpu_s']:.2f} | {probe['cache_equal']} |",
            "",
            f"The pre-token cache makes the engine's render + encode "
            f"{per_m['crate_cpu_s'] / per_m['engine_cpu_s']:.1f}x cheaper in CPU than the same "
            f"render with the tokenizers crate encoding, and "
            f"{per_m['hf_cpu_s'] / per_m['engine_cpu_s']:.1f}x cheaper than `encode_batch` alone "
            "(which does not even render); the same idea in pure Python costs "
            f"{per_m['cache_cpu_s'] / per_m['engine_cpu_s']:.1f}x the engine's CPU.",
        ]
    ahead = data.get("readahead")
    if ahead:
        lines += [
            "",
            "### Read-ahead of the corpus reader",
            "",
            f"RSS of a process reading the {human_rows(ahead['rows'])}-row corpus, "
            f"{ahead['idle_s']:.0f} s after taking its first batch while the consumer is busy "
            f"(as the plan is while it tokenizes): Polars' `collect_batches` "
            f"{ahead['polars_rss_gb']:.2f} GB; the pull reader the plan uses "
            f"(`Corpus.standardized_batches`, one Parquet slice per batch) "
            f"{ahead['pull_rss_gb']:.2f} GB, "
            f"{ahead['polars_rss_gb'] / ahead['pull_rss_gb']:.1f}x less. A streaming collect "
            "keeps decoding ahead of a slow consumer, so the decoded text, not only the compact "
            "state, would sit in the plan's peak RSS.",
        ]
    ratios = data.get("ratios") or []
    if ratios:
        lines += [
            "",
            f"### Dedup engine ratios at {human_rows(max(r['rows'] for r in ratios))} rows",
            "",
            "`benches/compare_dedup.py`'s planted corpus (80-140-word prompts, 10% planted near "
            "duplicates, 10% decoys below the threshold), 112 permutations, threshold 0.8, "
            "measured side by side in one run.",
            "",
            "| rows | mipo s | baseline | baseline s | speedup | mipo P / R | baseline P / R |",
            "|---:|---:|---|---:|---:|---|---|",
        ]
        for r in ratios:
            lines.append(
                f"| {human_rows(r['rows'])} | {r['mipo_s']:.2f} | {r['baseline']} | "
                f"{r['baseline_s']:.1f} | {r['speedup']:.1f}x | {r['mipo_p']:.3f} / "
                f"{r['mipo_r']:.3f} | {r['baseline_p']:.3f} / {r['baseline_r']:.3f} |"
            )
        lines += data.get("ratio_notes", [])
    if not (probe or ahead or ratios) and data.get("kept_probes"):
        lines += [
            "",
            "*The subsections below were not rerun by this run (plan sizes only); they are kept "
            "as the previous run of this script wrote them.*",
            "",
            data["kept_probes"],
        ]
    lines.append(END)
    return "\n".join(lines)


def notes(data: dict[str, Any]) -> list[str]:
    """Linearity, the 5M-row targets and the extrapolation, from the measured runs."""
    runs = sorted(data["runs"].values(), key=lambda r: (r["rows"], r["load_avg"]))
    if len(runs) < 2:
        return []
    rows = [r["rows"] for r in runs]
    a_c, b_c = linear_fit(rows, [r["cpu_s"] for r in runs])
    a_m, b_m = linear_fit(rows, [r["peak_rss_gb"] for r in runs])
    per_row = [r["wall_s"] / r["rows"] * 1e6 for r in runs]
    per_row_cpu = [r["cpu_s"] / r["rows"] * 1e6 for r in runs]
    rss_order = [r["peak_rss_gb"] for r in runs]
    out = [
        "**Linearity.** CPU time (user + sys of the process; what the load does not inflate) "
        f"fits {a_c:.1f} s + {b_c * 1e6:.1f} µs/row; CPU µs per row from the smallest to the "
        f"largest run: {', '.join(f'{x:.0f}' for x in per_row_cpu)} (flat = linear). Wall µs "
        f"per row: {', '.join(f'{x:.0f}' for x in per_row)}, and per step (wall, so they move "
        "with the load column, but none trends up with rows): "
        + "; ".join(
            k + " " + ", ".join(f"{r['steps'][k] / r['rows'] * 1e6:.0f}" for r in runs)
            for k in PLAN_STEPS
        )
        + f". Peak RSS fits {a_m:.2f} GB + {b_m * 1e9:.0f} B/row"
        + (
            ", but it is not monotonic in rows: the corpus reader's read-ahead (*Read-ahead of "
            "the corpus reader*, below) races the tokenizer, and buffers more when the machine "
            "has CPU to spare (compare the load column)."
            if rss_order != sorted(rss_order)
            else "."
        ),
        "",
    ]
    # With a size measured more than once (the store keeps earlier runs under "ROWS@LOAD"),
    # the targets are judged on the run the other jobs disturbed least.
    cores = os.cpu_count() or 1
    for target_rows, target_s, target_gb in TARGETS:
        big = min(
            (r for r in runs if r["rows"] == target_rows),
            key=lambda r: r["load_avg"],
            default=None,
        )
        if big is None:
            out += [f"**{human_rows(target_rows)}-row targets**: not measured in this run.", ""]
            continue
        q = big["quality"]
        checks = [
            ("time", big["wall_s"], target_s, "s", big["wall_s"] <= target_s),
            ("peak RSS", big["peak_rss_gb"], target_gb, "GB", big["peak_rss_gb"] <= target_gb),
            ("precision", q["precision"], TARGET_PRECISION, "", q["precision"] >= 0.99),
            ("recall", q["recall"], TARGET_RECALL, "", q["recall"] >= 0.95),
        ]
        parts = [
            f"{name} {value:.4g}{unit} ({'meets' if ok else 'MISSES'} "
            f"{'<=' if name in ('time', 'peak RSS') else '>='} {target:g}{unit})"
            for name, value, target, unit, ok in checks
        ]
        share = big["steps"]["tokenize"] / sum(big["steps"][k] for k in PLAN_STEPS)
        floor = big["cpu_s"] / cores
        text = (
            f"**{human_rows(target_rows)}-row targets** (on the least-loaded "
            f"{human_rows(target_rows)} run, load {big['load_avg']}). {'; '.join(parts)}. "
            f"Tokenize is {share:.0%} of the plan's step time. The process used "
            f"{big['cpu_s']:.0f} CPU seconds, so alone on this machine's {cores} cores it needs "
            f"at least {floor:.0f} s"
            + (
                f": {target_s / floor - 1:.0%} headroom over that floor."
                if floor <= target_s
                else f", over the target by {floor / target_s:.2f}x even on idle cores."
            )
        )
        out += [text, ""]
    fp_notes = []
    for r in runs:
        q = r["quality"]
        if q.get("dropped_checked"):
            fp_notes.append(
                f"{human_rows(r['rows'])}"
                + (f" (load {r['load_avg']})" if rows.count(r["rows"]) > 1 else "")
                + f": {q['originals_dropped']} originals dropped, "
                f"{q['dropped_confirmed']} of {q['dropped_checked']} checked are >= 0.8 Jaccard "
                f"to it (lowest {q['dropped_min_jaccard']:.3f})"
            )
    if fp_notes:
        out += [
            "**Precision.** Counted against synth's planted truth, an original that dedup drops "
            "is a false positive. Each was re-checked against the kept row dedup matched it "
            "to, with the pure-Python reference normalization and exact word 5-gram sets: "
            + "; ".join(fp_notes)
            + ". Those that reach 0.8 are templated originals that really are near duplicates "
            "(the engine verifies every candidate pair exactly, so it cannot drop a row below "
            "the threshold); the truth, not the dedup, is what is off there.",
            "",
        ]
    measured = {r["rows"] for r in runs}
    for n in [n for n in (10_000_000, 50_000_000) if n not in measured]:
        cpu = a_c + b_c * n
        out.append(
            f"- **{human_rows(n)} rows** (extrapolated on the lines): CPU ~{cpu:,.0f} s, so "
            f">= {cpu / cores / 60:.0f} min on {cores} idle cores; peak RSS ~{a_m + b_m * n:.0f} "
            "GB on the RSS line."
        )
    out += ["", *data.get("bounds", [])]
    return out


BOUNDS = [
    "**What bounds it.** *Memory*: the text is streamed in 65,536-row batches (Parquet is "
    "pulled a slice at a time, so the reader cannot run ahead of the consumer) and written to "
    "part files, so what grows with the corpus is compact state: (1) the dedup state, ~0.42 KB "
    "per kept ~70-word prompt: 32-bit fingerprints of its distinct shingles (4 B each, most of "
    "it), a 6-byte entry per LSH band (the bands and the exact-hash map are sorted runs plus a "
    "bounded recent-insert table, `rust/dedup/`, not hash maps at half load), its 20-byte "
    "exact-hash entry; a removed row costs only its exact-hash entry; (2) the per-prompt "
    "columns the derangement needs (`id`, `user_id`, "
    "`cluster`, `has_context`, `num_prompt_tokens`: tens of bytes per row); (3) the "
    "derangement's arrays (a few u32 per row). (1) is most of the fitted bytes per row. The "
    "hard ceiling is 2^32 - 1 rows (UInt32 cluster ids and plan indices). *Time*: linear when "
    "the CPU µs per row above stay flat (dedup included: LSH candidate lists stay short even "
    "on synth's templated text).",
]


def previous_probes() -> str | None:
    """The probe subsections (``### ...``) of the section already in RESULTS.md, if any: kept
    when a run measures only plan sizes (``--no-compare --readahead-rows 0 --tokenize-rows 0``)."""
    text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.is_file() else ""
    if BEGIN not in text or END not in text:
        return None
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    start = section.find("\n### ")
    return section[start:].strip() if start >= 0 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [] if s == "none" else [parse_rows(x) for x in s.split(",")],
        help="comma-separated row counts (500k, 2M); none: only the probes",
    )
    p.add_argument("--quick", action="store_true", help="100k and 500k rows only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mipo-scale"))
    p.add_argument("--compare-rows", type=parse_rows, help="mipo vs rensa [1M; --quick 100k]")
    p.add_argument(
        "--datasketch-rows", type=parse_rows, help="mipo vs datasketch [100k; --quick 10k]"
    )
    p.add_argument("--no-compare", action="store_true", help="skip the dedup engine ratios")
    p.add_argument(
        "--readahead-rows",
        type=parse_rows,
        help="corpus size of the reader read-ahead probe (0: skip) [5M; --quick 500k]",
    )
    p.add_argument(
        "--tokenize-rows",
        type=parse_rows,
        default=20_000,
        help="rows of the tokenize-cost probe (0: skip)",
    )
    p.add_argument("--render-only", action="store_true", help="redraw from scale-results.json")
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md / the plot")
    p.add_argument("--keep-plans", action="store_true", help="keep each OUT folder")
    args = p.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES if args.sizes is None else args.sizes
    for name, full, quick in (
        ("compare_rows", 1_000_000, 100_000),
        ("datasketch_rows", 100_000, 10_000),
        ("readahead_rows", 5_000_000, 500_000),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = args.workdir / "scale-results.json"
    data: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {"runs": {}}

    def save() -> None:
        data["date"] = time.strftime("%Y-%m-%d")
        data["machine"] = (
            f"{cpu_name()} ({platform.machine()}), {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}"
        )
        store.write_text(json.dumps(data, indent=1))

    if not args.render_only:
        for rows in sizes:
            print(f"== {human_rows(rows)} rows", flush=True)
            corpus = make_corpus(rows, args.seed, args.workdir)
            out = args.workdir / f"plan-{rows}"
            run = run_plan(corpus, out, args.model)
            run["rows"] = rows
            run["quality"] = quality(corpus, out / "plan.parquet")
            if not args.keep_plans:
                shutil.rmtree(out, ignore_errors=True)
            data["runs"][str(rows)] = run
            save()
            q = run["quality"]
            print(
                f"  wall {run['wall_s']:.1f} s, CPU {run['cpu_s']:.1f} s, peak RSS "
                f"{run['peak_rss_gb']:.2f} GB, steps {run['steps']}, P {q['precision']:.4f} "
                f"R {q['recall']:.4f} (load {run['load_avg']})",
                flush=True,
            )
        if args.readahead_rows:
            print(f"== read-ahead probe on {human_rows(args.readahead_rows)} rows", flush=True)
            corpus = make_corpus(args.readahead_rows, args.seed, args.workdir)
            data["readahead"] = {"rows": args.readahead_rows, **readahead_probe(corpus)}
            save()
        if args.tokenize_rows:
            print(f"== tokenize probe on {human_rows(args.tokenize_rows)} rows", flush=True)
            corpus = make_corpus(min(sizes, default=100_000), args.seed, args.workdir)
            data["tokenize"] = tokenize_probe(corpus, args.tokenize_rows)
            save()
        if not args.no_compare:
            data["ratios"] = [
                {
                    "rows": r["rows"],
                    "mipo_s": r["mipo_s"],
                    "baseline": r["baseline"],
                    "baseline_s": r["baseline_s"],
                    "speedup": r["speedup"],
                    "mipo_p": r["mipo_p"],
                    "mipo_r": r["mipo_r"],
                    "baseline_p": r["baseline_p"],
                    "baseline_r": r["baseline_r"],
                }
                for r in engine_ratios(args.compare_rows, args.datasketch_rows)
            ]
            data["ratio_notes"] = [
                "",
                f"datasketch is measured at {human_rows(args.datasketch_rows)} rows only: it "
                "is a Python loop (one `MinHash` object, `update_batch`, `query` and `insert` "
                "per row), so 1M rows would take ~10x the 100k time. rensa's bulk "
                "`add_pairs` is fed 100k-row slices (one call with 1M shingle lists would hold "
                "~100M Python strings, several GB). Both baselines shingle in Python, as "
                "their users must; that time counts. mipo uses the engine's threads "
                f"({os.cpu_count()} cores here), the baselines one.",
            ]
        save()
    data["bounds"] = BOUNDS
    data["notes"] = notes(data)
    if not any(data.get(k) for k in ("tokenize", "readahead", "ratios")):
        data["kept_probes"] = previous_probes()
    block = render(data)
    print(block)
    if not args.no_write:
        plot(sorted(data["runs"].values(), key=lambda r: r["rows"]), PLOT)
        replace_section(block, BEGIN, END)
        print(f"written {RESULTS} and {PLOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
