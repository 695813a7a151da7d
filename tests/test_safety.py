"""Safety of `mipo build-pairs`: a model's own code runs only with --trust-remote-code, pickle
weights load only with --allow-pickle, and nothing is written (or deleted) outside OUTDIR.

The remote-code and pickle payloads here are real: a ``modeling_*.py`` and a pickle that, when
executed, create a marker file. The tests assert the marker exists exactly when the user opted
in, so they fail if any code path loads the model unsafely (not only if a message changes).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from mipo import _engine
from mipo.cli import cli

QUESTIONS = [
    "What should I eat before a long run?",
    "How do I read a CSV file in Python?",
    "Which houseplants are safe for cats?",
    "How can I sleep better during the day?",
    "Suggest a cheap dinner plan for the week.",
]
FAST = [
    "--backend", "hf", "--max-new-tokens", "4", "--chunk-size", "2", "--batch-size", "2",
    "--keep-truncated", "--no-progress",
]  # fmt: skip

needs_engine = pytest.mark.skipif(
    not all(hasattr(_engine, n) for n in ("dedup", "ChatTokenizer", "derangement")),
    reason="the native engine lacks dedup/ChatTokenizer/derangement: rebuild it (make dev)",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS))
    )
    return path


def build_pairs(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["build-pairs", *map(str, args)])


def assert_refused(result: Result, *needles: str) -> str:
    """Exit 2, one ``error:`` line naming every needle, no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- remote code ---------------------------------------------------------------------------------

REMOTE_MODULE = """
import os
from pathlib import Path
Path(os.environ["MIPO_TEST_MARKER"]).write_text("the model's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilForCausalLM(LlamaForCausalLM):
    config_class = LlamaConfig
"""


def remote_code_model(tiny_model_dir: Path, dst: Path, where: str) -> Path:
    """The tiny model, plus an ``auto_map`` (in ``where``) naming a module that leaves a marker."""
    folder = copy_model(tiny_model_dir, dst)
    (folder / "modeling_evil.py").write_text(REMOTE_MODULE)
    path = folder / where
    data = json.loads(path.read_text())
    if where == "config.json":
        data["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    else:
        data["auto_map"] = {"AutoTokenizer": [None, "modeling_evil.EvilTokenizer"]}
    path.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_remote_code_refused_without_the_flag(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv("MIPO_TEST_MARKER", str(marker))
    model = remote_code_model(tiny_model_dir, tmp_path / "model", where)
    out = tmp_path / "out"
    result = build_pairs(corpus, "-o", out, "--model", model, *FAST)
    assert_refused(result, "--trust-remote-code", "auto_map")
    assert not marker.exists()
    assert not out.exists()


def _subprocess_build_pairs(
    args: list[str | Path], env: dict[str, str], timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mipo", "build-pairs", *map(str, args)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@needs_engine
def test_remote_code_runs_only_with_the_flag(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """With --trust-remote-code the model's class comes from its own module (it really runs);
    the run is a subprocess so the dynamically imported module stays out of this process."""
    marker = tmp_path / "marker"
    model = remote_code_model(tiny_model_dir, tmp_path / "model", "config.json")
    env = {
        "MIPO_TEST_MARKER": str(marker),
        "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
        "HF_HUB_OFFLINE": "1",
        "RAYON_NUM_THREADS": "1",
    }
    refused = _subprocess_build_pairs([corpus, "-o", tmp_path / "a", "--model", model, *FAST], env)
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr, refused.stderr
    assert not marker.exists()

    trusted = _subprocess_build_pairs(
        [corpus, "-o", tmp_path / "b", "--model", model, "--trust-remote-code", *FAST], env
    )
    assert trusted.returncode == 0, trusted.stderr
    assert marker.read_text() == "the model's own code ran"
    assert (tmp_path / "b" / "pairs.parquet").is_file()


# --- pickle weights ------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the file named by ``path`` (stands in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def pickle_only_model(tiny_model_dir: Path, dst: Path) -> Path:
    """The tiny model with its weights as a (benign) ``pytorch_model.bin`` instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    folder = copy_model(tiny_model_dir, dst)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_refused_without_the_flag(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "model")
    (model / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    out = tmp_path / "out"
    line = assert_refused(
        build_pairs(corpus, "-o", out, "--model", model, *FAST),
        "pytorch_model.bin",
        "arbitrary code",
        "--allow-pickle",
        "safetensors",
    )
    assert "pickle" in line
    assert not marker.exists()
    assert not out.exists()


@needs_engine
def test_pickle_weights_load_with_the_flag(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    model = pickle_only_model(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "out"
    result = build_pairs(corpus, "-o", out, "--model", model, "--allow-pickle", *FAST)
    assert result.exit_code == 0, (result.output, result.exception)
    assert pl.read_parquet(out / "pairs.parquet").height > 0


@needs_engine
def test_pickle_beside_safetensors_is_never_unpickled(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """A folder with safetensors *and* a hostile .bin: generation loads only the safetensors."""
    model = copy_model(tiny_model_dir, tmp_path / "model")
    marker = tmp_path / "marker"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    out = tmp_path / "out"
    result = build_pairs(corpus, "-o", out, "--model", model, *FAST)
    assert result.exit_code == 0, (result.output, result.exception)
    assert not marker.exists()


# --- output paths --------------------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder`` (links as their target, files as their bytes)."""
    tree: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            tree[key] = f"-> {os.readlink(path)}"
        elif path.is_file():
            tree[key] = path.read_bytes()
    return tree


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder mipo must never write to or delete from, with a file and a subfolder."""
    folder = tmp_path / "outside"
    (folder / "gen").mkdir(parents=True)
    (folder / "victim.txt").write_text("precious")
    (folder / "gen" / "keep.txt").write_text("precious too")
    return folder


@needs_engine
def test_output_folder_given_as_a_symlink_is_followed_and_nothing_else_is_touched(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, outside: Path
) -> None:
    real = tmp_path / "real-out"
    real.mkdir()
    link = tmp_path / "out-link"
    link.symlink_to(real, target_is_directory=True)
    before = _tree(outside)
    result = build_pairs(corpus, "-o", link, "--model", tiny_model_dir, *FAST)
    assert result.exit_code == 0, (result.output, result.exception)
    assert link.is_symlink() and (real / "pairs.parquet").is_file()
    assert _tree(outside) == before


@needs_engine
def test_dangling_symlink_as_output_folder_is_a_clear_error(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, outside: Path
) -> None:
    link = tmp_path / "out-link"
    link.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    result = build_pairs(corpus, "-o", link, "--model", tiny_model_dir, *FAST)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert not (tmp_path / "nowhere").exists()


@needs_engine
@pytest.mark.parametrize("name", ["pairs.parquet", "plan.parquet", "stats.json", "run.json"])
def test_planted_file_symlinks_in_outdir_are_replaced_not_written_through(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, outside: Path, name: str
) -> None:
    """An output file that is a symlink out of OUTDIR is replaced by the rename (and with
    --overwrite, unlinked), never written through or deleted at its target."""
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(outside / "victim.txt")
    before = _tree(outside)
    result = build_pairs(corpus, "-o", out, "--model", tiny_model_dir, "--overwrite", *FAST)
    assert result.exit_code in (0, 2), (result.output, result.exception)
    assert "Traceback" not in result.output
    assert _tree(outside) == before
    if result.exit_code == 0:
        assert not (out / name).is_symlink()


@needs_engine
def test_overwrite_never_deletes_outside_the_output_folder(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, outside: Path
) -> None:
    """A finished run whose ``generations`` folder was swapped for a link out of OUTDIR: a
    rerun with other options and --overwrite removes the link, not the folder it points to."""
    out = tmp_path / "out"
    assert build_pairs(corpus, "-o", out, "--model", tiny_model_dir, *FAST).exit_code == 0
    shutil.rmtree(out / "generations")
    (out / "generations").symlink_to(outside / "gen", target_is_directory=True)
    before = _tree(outside)
    result = build_pairs(
        corpus, "-o", out, "--model", tiny_model_dir, *FAST, "--temperature", "0.5", "--overwrite"
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert _tree(outside) == before
    assert not (out / "generations").is_symlink()
    assert (out / "pairs.parquet").is_file()


@needs_engine
def test_generation_chunks_are_not_written_through_a_planted_folder_link(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, outside: Path
) -> None:
    """``OUTDIR/generations`` planted as a link to another folder before the generate stage:
    the chunks must stay inside OUTDIR (or the run is refused), never land in the link target."""
    out = tmp_path / "out"
    plan = build_pairs(corpus, "-o", out, "--model", tiny_model_dir, "--plan-only", *FAST)
    assert plan.exit_code == 0, (plan.output, plan.exception)
    (out / "generations").symlink_to(outside / "gen", target_is_directory=True)
    before = _tree(outside)
    result = build_pairs(corpus, "-o", out, "--model", tiny_model_dir, *FAST)
    assert "Traceback" not in result.output
    assert _tree(outside) == before, "chunks were written outside OUTDIR through a symlink"


@needs_engine
def test_input_inside_the_output_folder_is_never_deleted(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """An input file that sits in OUTDIR under an output's name is refused, not clobbered, even
    with --overwrite."""
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "plan.parquet"
    pl.read_ndjson(corpus).write_parquet(inside)
    data = inside.read_bytes()
    result = build_pairs(inside, "-o", out, "--model", tiny_model_dir, "--overwrite", *FAST)
    assert "Traceback" not in result.output
    assert inside.is_file() and inside.read_bytes() == data, "--overwrite deleted the input"


@needs_engine
def test_output_folder_inside_an_input_folder_is_refused_or_resumable(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """INPUT a folder, OUTDIR inside it: mipo must not read its own outputs back as input.

    Either the first run is refused up front (one clear line), or it runs and the rerun of the
    same command resumes (exit 0) instead of tripping over ``plan.parquet`` and the chunks.
    """
    data = tmp_path / "data"
    data.mkdir()
    pl.DataFrame({"id": [f"q{i}" for i in range(5)], "prompt": QUESTIONS}).write_parquet(
        data / "corpus.parquet"
    )
    out = data / "out"
    first = build_pairs(data, "-o", out, "--model", tiny_model_dir, *FAST)
    if first.exit_code != 0:
        assert_refused(first, str(out))
        return
    again = build_pairs(data, "-o", out, "--model", tiny_model_dir, *FAST)
    assert again.exit_code == 0, again.stderr
