"""Write the Criterion section of benches/RESULTS.md from what the last ``cargo bench`` measured.

Criterion keeps each bench's latest estimates in ``target/criterion/<id>/new/``
(``benchmark.json``: its id and declared throughput; ``estimates.json``: the bootstrap
estimates of the time per iteration, in ns). This script only reads them, so run it right
after ``cargo bench`` (``make bench`` does).

    cargo bench && python benches/criterion_md.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import replace_section

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- criterion:begin -->", "<!-- criterion:end -->"


def _seconds(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def _rate(per_second: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if per_second >= scale:
            return f"{per_second / scale:.3g}{unit}"
    return f"{per_second:.3g}"


def collect(criterion_dir: Path) -> list[dict[str, object]]:
    """One row per bench with ``new`` estimates, sorted by id; ``[]`` when there are none."""
    rows = []
    for bench in sorted(criterion_dir.glob("**/new/benchmark.json")):
        info = json.loads(bench.read_text(encoding="utf-8"))
        estimates = json.loads((bench.parent / "estimates.json").read_text(encoding="utf-8"))
        mean = estimates["mean"]
        interval = mean["confidence_interval"]
        throughput = info.get("throughput") or {}
        elements = throughput.get("Elements") or throughput.get("Bytes")
        kind = "elements" if "Elements" in throughput else "bytes"
        rows.append(
            {
                "id": info["full_id"],
                "mean_ns": mean["point_estimate"],
                "low_ns": interval["lower_bound"],
                "high_ns": interval["upper_bound"],
                "per_second": elements / (mean["point_estimate"] / 1e9) if elements else None,
                "unit": kind,
                "measured": bench.stat().st_mtime,
            }
        )
    return sorted(rows, key=lambda row: str(row["id"]))


def render(rows: list[dict[str, object]]) -> str:
    newest = max(float(row["measured"]) for row in rows)  # type: ignore[arg-type]
    lines = [
        BEGIN,
        "### Criterion (Rust only, `cargo bench`)",
        "",
        f"Written by `benches/criterion_md.py` from `target/criterion` (latest estimates "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(newest))}; {platform.machine()}). "
        "Mean time per iteration with Criterion's 95% bootstrap interval; throughput is the "
        "bench's declared elements (rows) per iteration over the mean.",
        "",
        "| bench | mean | 95% interval | throughput |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        rate = row["per_second"]
        shown = f"{_rate(rate)} {row['unit']}/s" if rate else "-"  # type: ignore[arg-type]
        lines.append(
            f"| {row['id']} | {_seconds(row['mean_ns'])} | "  # type: ignore[arg-type]
            f"{_seconds(row['low_ns'])} – {_seconds(row['high_ns'])} | {shown} |"  # type: ignore[arg-type]
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion-dir", type=Path, default=ROOT / "target" / "criterion")
    args = parser.parse_args()
    rows = collect(args.criterion_dir)
    if not rows:
        print(
            f"error: no Criterion estimates under {args.criterion_dir}: run `cargo bench` first",
            file=sys.stderr,
        )
        return 1
    replace_section(render(rows), BEGIN, END, heading=None)
    print(f"wrote {len(rows)} benches into the Criterion section of benches/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
