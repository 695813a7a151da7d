"""The "GPU check" section of benches/RESULTS.md, from the summary a GPU check wrote.

``tools/gpu_check.sh run`` (docs/gpu.md) leaves ``gpu_check.json`` in the device tool's output
folder; this turns it into a table of the gpu tier's tests (outcome, time, peak GPU memory) and
one of the throughput probe, between ``<!-- gpu-check:begin -->`` and ``<!-- gpu-check:end -->``.
A summary whose device is not a CUDA GPU (a dry run on the CPU) is refused: nothing here may
read as a GPU figure that no GPU measured.

Run:  python benches/gpu_results.py PATH/gpu_check.json [--no-write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from results_md import replace_section

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
HEADING = "## GPU check"


class NotAGpuResult(ValueError):
    """The summary was not measured on a CUDA GPU."""


def _mib(value: Any) -> str:
    return "" if value is None else f"{value:,.0f}"


def _probe_setting(row: dict[str, Any]) -> str:
    if row["workload"] == "generate":
        return (
            f"{row['rows']} prompts x up to {row['max_new_tokens']} new tokens, batch "
            f"{row['batch_size']}, {row['dtype']}"
        )
    kind = "LoRA" if row.get("lora") else "full fine-tuning"
    precision = "bf16 autocast" if row.get("bf16") else "fp32"
    return f"{kind}, {row['steps']} steps of {row['batch_size']} pairs, {precision}"


def _probe_result(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"skipped ({row['skipped']})"
    if "error" in row:
        return f"error: {row['error'].splitlines()[0][:120]}"
    if row["workload"] == "generate":
        return f"{row['new_tokens_per_s']:,.0f} new tokens/s ({row['new_tokens']} in {row['seconds']:.1f} s)"
    return f"{row['steps_per_s']:.2f} steps/s ({row['pairs_per_s']:.0f} pairs/s)"


def render(summary: dict[str, Any]) -> str:
    """The section's Markdown (BEGIN..END included)."""
    device = summary.get("device") or {}
    if device.get("device") != "cuda":
        raise NotAGpuResult(
            f"this summary was measured on {device.get('device') or 'no device'}, not a CUDA "
            "GPU: RESULTS.md takes GPU figures from a GPU run only"
        )
    versions = summary.get("versions") or {}
    stack = ", ".join(
        f"{name} {versions[name]}"
        for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "polars")
        if versions.get(name)
    )
    lines = [
        BEGIN,
        f"Written by `benches/gpu_results.py` from a run of `tools/gpu_check.sh run` "
        f"({summary.get('written_at', '?')}): {device.get('gpu')} ({_mib(device.get('gpu_memory_mib'))} "
        f"MiB), CUDA {device.get('cuda')}; {stack}. Peak GPU memory is "
        "`torch.cuda.max_memory_allocated` over the test or workload.",
        "",
    ]
    tests = summary.get("tests") or {}
    counts = ", ".join(f"{tests.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped"))
    lines += [f"`pytest -m gpu` (tests/test_gpu.py): {counts}.", ""]
    lines += ["| test | outcome | seconds | peak GPU memory (MiB) |", "|---|---|---|---|"]
    for name, entry in (tests.get("tests") or {}).items():
        outcome = entry["outcome"]
        if entry.get("message") and outcome != "passed":
            outcome += f": {entry['message'].splitlines()[0][:100]}"
        lines.append(
            f"| `{name}` | {outcome} | {entry['seconds']:.1f} | {_mib(entry.get('peak_gpu_mib'))} |"
        )
    probe = summary.get("probe") or {}
    lines += ["", "Throughput (`tools/gpu_probe.py`, one run):", ""]
    lines += [
        "| model | workload | setting | result | peak GPU memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for row in probe.get("workloads", []):
        setting = _probe_setting(row) if "rows" in row or "steps" in row else ""
        lines.append(
            f"| {row['model']} | {row['workload']} | {setting} | {_probe_result(row)} | "
            f"{_mib(row.get('peak_gpu_mib'))} |"
        )
    if probe.get("builtin"):
        lines += ["", f"Built-in model: {probe['builtin']}."]
    if summary.get("problems"):
        lines += ["", "Problems the check reported: " + "; ".join(summary["problems"]) + "."]
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="gpu_check.json from tools/gpu_check.sh run")
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    args = parser.parse_args(argv)
    summary = json.loads(args.summary.read_text(encoding="utf-8"))
    try:
        block = render(summary)
    except NotAGpuResult as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(block)
    if not args.no_write:
        replace_section(block, BEGIN, END, HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
