"""The GPU check's summary: one JSON from what ``tools/gpu_check.sh run`` left in its folder.

Reads ``steps.tsv`` (each step's exit code and seconds), ``verify.json`` (the installed wheels
and their requirements), ``pytest.xml`` (JUnit: each test's outcome and time),
``gpu_tests.json`` (each test's peak GPU memory, the device) and ``probe.json`` (throughput);
a missing or unreadable file is recorded as such, never taken for a pass. Exits 0 only when
every step exited 0 and no test failed.

    python tools/gpu_report.py --dir "$OUT" --out "$OUT/gpu_check.json"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

STEPS = ("environment", "install", "verify", "tests", "probe")
# A test's outcome -> the count it adds to ("error" stays free for a file that failed to read).
COUNTS = {"passed": "passed", "failed": "failed", "error": "errors", "skipped": "skipped"}


def read_steps(path: Path) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return steps
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, rc, seconds = parts
        steps[name] = {
            "exit": int(rc) if rc.lstrip("-").isdigit() else rc,
            "seconds": int(seconds) if seconds.isdigit() else None,
        }
    return steps


def read_junit(path: Path) -> dict[str, Any]:
    """Counts and each test's outcome from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"error": f"{path.name}: {exc}"}
    cases: dict[str, dict[str, Any]] = {}
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:500]
                break
        entry: dict[str, Any] = {"outcome": outcome, "seconds": float(case.get("time", 0))}
        if message:
            entry["message"] = message
        cases[case.get("name", "?")] = entry
    counts = {k: 0 for k in COUNTS.values()}
    for entry in cases.values():
        counts[COUNTS[entry["outcome"]]] += 1
    return {**counts, "tests": cases}


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"error": f"{path.name} is missing"}
    except (OSError, ValueError) as exc:
        return {"error": f"{path.name} is unreadable: {exc}"}
    return value if isinstance(value, dict) else {"error": f"{path.name} is not a JSON object"}


def summarize(folder: Path) -> dict[str, Any]:
    steps = read_steps(folder / "steps.tsv")
    tests = read_junit(folder / "pytest.xml")
    measured = read_json(folder / "gpu_tests.json")
    for name, entry in tests.get("tests", {}).items():
        entry.update(measured.get("tests", {}).get(name, {}))
    probe = read_json(folder / "probe.json")
    verify = read_json(folder / "verify.json")
    device = {k: measured.get(k) for k in ("device", "gpu", "gpu_memory_mib", "torch", "cuda")}
    if device["device"] is None and "device" in probe:
        device = {k: probe.get(k) for k in device}
    problems = [f"step {s}: not run" for s in STEPS if s not in steps]
    problems += [f"step {s}: exit {v['exit']}" for s, v in steps.items() if v["exit"] != 0]
    problems += [f"{n} {t['outcome']}" for n, t in tests.get("tests", {}).items() if t["outcome"] in ("failed", "error")]  # fmt: skip
    for part, value in (("tests", tests), ("probe", probe), ("verify", verify)):
        if "error" in value:
            problems.append(f"{part}: {value['error']}")
    return {
        "written_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "ok": not problems,
        "problems": problems,
        "device": device,
        "versions": verify.get("versions", {}),
        "install": {"ok": verify.get("ok"), "problems": verify.get("problems", [])},
        "steps": steps,
        "tests": tests,
        "probe": probe,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="the check's output folder")
    parser.add_argument("--out", type=Path, required=True, help="the summary JSON to write")
    args = parser.parse_args(argv)
    summary = summarize(args.dir)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"gpu check: {'ok' if summary['ok'] else 'problems: ' + '; '.join(summary['problems'])}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
