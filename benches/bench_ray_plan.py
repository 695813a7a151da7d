"""The plan stage on one machine vs on a local Ray runtime, side by side on the same corpus.

Measures, on synthetic rows (:mod:`mipo.synth`, planted exact and near duplicates):

* local (:func:`mipo.pairs.plan.build_plan`): seconds, rows/s, peak RSS of the process;
* Ray (:func:`mipo.pairs.ray_plan.build_plan_ray`, ``W`` CPUs, ``W`` partitions, a capped object
  store): seconds, rows/s, the driver's peak RSS, the largest peak RSS of a worker process, the
  bytes shuffled per row (partition blocks that cross between tasks) and the bytes the object
  store holds per row (tokenized rows + sketches, spillable to disk), candidate pairs and verified
  edges per row;
* whether the two plans agree: the same rows, keep mask and clusters (and, within one derangement
  block, the same bytes).

Each run is its own subprocess, so each peak RSS is that run's alone. From the per-row costs the
script works out a 1B-row plan (nodes, memory per node, shuffle volume, time) and writes both
into benches/RESULTS.md (section "Plan stage on Ray"); docs/scaling.md explains the arithmetic.

Run:  nice -n 19 python benches/bench_ray_plan.py [--rows N] [--workers W] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from results_md import cpu_name, replace_section

BEGIN, END = "<!-- ray-plan:begin -->", "<!-- ray-plan:end -->"
HEADING = "## Plan stage on Ray"
BILLION = 1_000_000_000


def _tokenizer_dir(tmp: Path) -> tuple[Path, str]:
    from mipo.models import BUILTIN_CACHE_NAME, cache_root

    builtin = cache_root() / BUILTIN_CACHE_NAME
    if (builtin / "tokenizer.json").is_file():
        return builtin, "SmolLM2-135M-Instruct"
    from mipo._testing import build_tiny_model

    return build_tiny_model(tmp / "tiny"), "tiny test model"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_local(corpus: str, model: str, out: str) -> dict[str, Any]:
    from mipo import engine
    from mipo.corpus import open_corpus
    from mipo.pairs.plan import PlanConfig, build_plan

    tokenizer = engine.ChatTokenizer.from_pretrained(model)
    start = time.perf_counter()
    stats = build_plan(open_corpus(corpus), tokenizer, out, PlanConfig(seed=0))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss": _peak_rss(), "stats": stats.as_dict()}


def child_ray(
    corpus: str, model: str, out: str, workers: int, partitions: int, store_mb: int
) -> dict[str, Any]:
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")  # a loaded, shared machine
    import ray

    from mipo import engine
    from mipo.corpus import open_corpus
    from mipo.pairs.plan import PlanConfig
    from mipo.pairs.ray_plan import RayPlanReport, build_plan_ray

    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        object_store_memory=store_mb * 1024 * 1024,
    )
    tokenizer = engine.ChatTokenizer.from_pretrained(model)
    report = RayPlanReport()
    start = time.perf_counter()
    stats = build_plan_ray(
        open_corpus(corpus),
        tokenizer,
        model,
        out,
        PlanConfig(seed=0),
        partitions=partitions,
        report=report,
    )
    seconds = time.perf_counter() - start
    ray.shutdown()
    return {
        "seconds": seconds,
        "rss": _peak_rss(),
        "stats": stats.as_dict(),
        "report": report.as_dict(),
    }


def _run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_rows(a: Path, b: Path) -> bool:
    import polars as pl

    cols = ["plan_index", "row", "cluster", "num_prompt_tokens"]
    return pl.read_parquet(a, columns=cols).equals(pl.read_parquet(b, columns=cols))


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def billion_plan(ray_run: dict[str, Any], rows: int, workers: int) -> dict[str, Any]:
    """A 1B-row plan from the measured per-row costs (docs/scaling.md explains each line)."""
    rep = ray_run["report"]
    shuffle_per_row = rep["shuffle_bytes_total"] / rows
    held_per_row = rep["held_bytes"] / rows
    edges_per_row = rep["verified_edges"] / rows
    # Wall seconds x CPUs of a machine shared with other jobs: an upper bound on CPU time.
    cpu_s_per_row = ray_run["seconds"] * workers / rows
    write_s_per_row = ray_run["stats"]["step_seconds"]["write"] / rows
    rows_per_partition = rows / rep["partitions"]
    nodes, node_cpus, node_ram = 64, 32, 128e9
    return {
        "shuffle_per_row": shuffle_per_row,
        "shuffle_total": shuffle_per_row * BILLION,
        "held_per_row": held_per_row,
        "held_per_node": held_per_row * BILLION / nodes,
        "edges_total": edges_per_row * BILLION,
        # (s, r) pairs, their sorted copy and the map of removed rows: ~24 B per edge.
        "resolve_bytes": edges_per_row * BILLION * 24,
        "cpu_hours": cpu_s_per_row * BILLION / 3600,
        "hours": cpu_s_per_row * BILLION / (nodes * node_cpus) / 3600,
        "write_hours": write_s_per_row * BILLION / 3600,
        "write_us": write_s_per_row * 1e6,
        "nodes": nodes,
        "node_cpus": node_cpus,
        "node_ram": node_ram,
        "partitions": math.ceil(BILLION / rows_per_partition),
        "rows_per_partition": rows_per_partition,
    }


def write_results(
    rows: int,
    workers: int,
    store_mb: int,
    tok: str,
    local: dict[str, Any],
    runs: list[dict[str, Any]],
    checks: list[tuple[bool, bool]],
) -> str:
    lst = local["stats"]
    head = "| | local plan | " + " | ".join(
        f"Ray, {r['report']['partitions']} partitions" for r in runs
    )
    rows_md = [
        head + " |",
        "|---|---:|" + "---:|" * len(runs),
    ]

    def row(name: str, local_value: str, values: list[str]) -> None:
        rows_md.append(f"| {name} | {local_value} | " + " | ".join(values) + " |")

    row("seconds", f"{local['seconds']:.1f}", [f"{r['seconds']:.1f}" for r in runs])
    row(
        "rows/s",
        f"{rows / local['seconds']:,.0f}",
        [f"{rows / r['seconds']:,.0f}" for r in runs],
    )
    row("peak RSS, driver / process", _gb(local["rss"]), [_gb(r["rss"]) for r in runs])
    row(
        "peak RSS, largest worker process",
        "—",
        [f"{_gb(r['report']['worker_peak_rss'])}" for r in runs],
    )
    row(
        "rows per partition",
        "—",
        [f"{rows // r['report']['partitions']:,}" for r in runs],
    )
    row(
        "shuffle bytes per row",
        "—",
        [f"{r['report']['shuffle_bytes_total'] / rows:.0f}" for r in runs],
    )
    row(
        "object store bytes per row (rows + sketches)",
        "—",
        [f"{r['report']['held_bytes'] / rows:.0f}" for r in runs],
    )
    row(
        "candidate pairs / verified edges per row",
        "—",
        [
            f"{r['report']['candidate_pairs'] / rows:.3f} / {r['report']['verified_edges'] / rows:.3f}"
            for r in runs
        ],
    )
    row(
        "exact / near duplicates removed",
        f"{lst['exact_duplicates']:,} / {lst['near_duplicates']:,}",
        [f"{r['stats']['exact_duplicates']:,} / {r['stats']['near_duplicates']:,}" for r in runs],
    )
    row(
        "prompts planned",
        f"{lst['prompts_planned']:,}",
        [f"{r['stats']['prompts_planned']:,}" for r in runs],
    )
    row(
        "same rows, keep mask, clusters / same bytes",
        "—",
        [f"{'yes' if same else 'NO'} / {'yes' if ident else 'no'}" for same, ident in checks],
    )
    base = runs[0]
    plan = billion_plan(base, rows, workers)
    stages = ", ".join(f"{k} {v / rows:.0f}" for k, v in base["report"]["shuffle_bytes"].items())
    lines = [
        BEGIN,
        HEADING,
        "",
        f"`benches/bench_ray_plan.py`, {rows:,} synthetic rows (`mipo.synth`, seed 0), tokenizer: "
        f"{tok}; {cpu_name()}, {os.cpu_count()} cores shared with other jobs (`nice -n 19`; "
        "seconds are wall time under that load). Ray: a local runtime with "
        f"{workers} CPUs, object store capped at {store_mb} MB (spills to disk beyond). One "
        "subprocess per run, so each peak RSS is that run's alone.",
        "",
        *rows_md,
        "",
        f"Shuffle bytes per row by stage ({base['report']['partitions']} partitions): {stages}. "
        f"{base['report']['negative_blocks']} derangement block(s): with one block the negatives "
        "are the local plan's, hence the same bytes. Worker peak RSS counts the object-store pages "
        "a worker maps while it reads a block; the Ray runtime's own processes (raylet, GCS) are "
        "not in these figures.",
        "",
        f"**A 1B-row plan from these per-row costs** ({plan['nodes']} nodes of "
        f"{plan['node_cpus']} CPUs and {plan['node_ram'] / 1e9:.0f} GB; docs/scaling.md explains "
        "each line):",
        "",
        "| quantity | per row (measured) | 1B rows |",
        "|---|---:|---:|",
        f"| shuffle volume | {plan['shuffle_per_row']:.0f} B | "
        f"{plan['shuffle_total'] / 1e12:.2f} TB |",
        f"| object store (rows + sketches) | {plan['held_per_row']:.0f} B | "
        f"{_gb(plan['held_per_row'] * BILLION)} total, {_gb(plan['held_per_node'])} per node |",
        f"| verified edges (resolve step, one task) | {base['report']['verified_edges'] / rows:.3f} "
        f"| {plan['edges_total'] / 1e6:,.0f} M edges, ~{_gb(plan['resolve_bytes'])} |",
        f"| CPU time of the tasks (upper bound: wall × CPUs) | "
        f"{base['seconds'] * workers / rows * 1e6:.0f} µs | {plan['cpu_hours']:,.0f} CPU-hours, "
        f"~{plan['hours']:.2f} h on {plan['nodes']} nodes |",
        f"| the driver writing plan.parquet (one process) | {plan['write_us']:.1f} µs | "
        f"{plan['write_hours']:.1f} h |",
        f"| partitions for {plan['rows_per_partition']:,.0f} rows each (as here) | — | "
        f"{plan['partitions']:,} |",
        "",
        END,
    ]
    block = "\n".join(lines) + "\n"
    replace_section(block, BEGIN, END, None)
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the Ray runtime")
    parser.add_argument(
        "--partitions", default="2,8", help="comma-separated partition counts, one Ray run each"
    )
    parser.add_argument("--store-mb", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="20k rows, no RESULTS.md")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, corpus, model, out = args.child[:4]
        if kind == "local":
            result = child_local(corpus, model, out)
        else:
            result = child_ray(corpus, model, out, args.workers, int(args.child[4]), args.store_mb)
        print(json.dumps(result))
        return
    rows = 20_000 if args.quick else args.rows
    partitions = [int(p) for p in args.partitions.split(",")]
    from mipo.synth import SynthConfig, write_synth

    with tempfile.TemporaryDirectory(prefix="bench-ray-plan-") as tmp_name:
        tmp = Path(tmp_name)
        model, tok = _tokenizer_dir(tmp)
        corpus = tmp / "corpus.parquet"
        write_synth(SynthConfig(rows=rows, seed=0), corpus)
        print(f"corpus: {rows:,} rows", file=sys.stderr)
        local_out = tmp / "local.parquet"
        local = _run_child(["--child", "local", str(corpus), str(model), str(local_out)])
        print(f"local: {local['seconds']:.1f} s, {_gb(local['rss'])}", file=sys.stderr)
        runs, checks = [], []
        for p in partitions:
            out = tmp / f"ray-{p}.parquet"
            run = _run_child(
                [
                    "--workers",
                    str(args.workers),
                    "--store-mb",
                    str(args.store_mb),
                    "--child",
                    "ray",
                    str(corpus),
                    str(model),
                    str(out),
                    str(p),
                ]
            )
            print(
                f"ray, {p} partitions: {run['seconds']:.1f} s, driver {_gb(run['rss'])}, "
                f"worker {_gb(run['report']['worker_peak_rss'])}",
                file=sys.stderr,
            )
            runs.append(run)
            checks.append((_same_rows(local_out, out), _digest(local_out) == _digest(out)))
            out.unlink()
    if args.quick:
        print(json.dumps({"local": local, "ray": runs, "checks": checks}))
        return
    print(write_results(rows, args.workers, args.store_mb, tok, local, runs, checks))


if __name__ == "__main__":
    main()
