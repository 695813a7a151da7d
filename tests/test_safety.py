"""Safety of `mipo build-pairs`: a model's own code runs only with --trust-remote-code, pickle
weights (of a model or a LoRA adapter) load only with --allow-pickle, nothing is written (or
deleted) outside OUTDIR, a full disk during the plan is one clear line with nothing half-written,
and an input edited in place is noticed on a rerun.

The remote-code and pickle payloads here are real: a ``modeling_*.py`` and a pickle that, when
executed, create a marker file. The tests assert the marker exists exactly when the user opted
in, so they fail if any code path loads the model unsafely (not only if a message changes).
"""

from __future__ import annotations

import json
import os
import pickle
import random
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
    "--generation-backend", "hf", "--generation-max-new-tokens", "4",
    "--generation-chunk-size", "2", "--generation-batch-size", "2",
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
    result = build_pairs(corpus, "-o", out, "--model", model, "--set", "allow_pickle=true", *FAST)
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
        corpus,
        "-o",
        out,
        "--model",
        tiny_model_dir,
        *FAST,
        "--generation-temperature",
        "0.5",
        "--overwrite",
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


# --- pickle adapters -----------------------------------------------------------------------------


def _adapter_folder(tiny_model_dir: Path, dst: Path, *, safe: bool) -> Path:
    """A real LoRA adapter of the tiny model (random, non-zero LoRA weights, so merging it changes
    the model), saved as safetensors or as pickle (``adapter_model.bin``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    model.save_pretrained(dst, safe_serialization=safe)
    config = json.loads((dst / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_model_dir)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("layout", ["adapter", "train-output"])
def test_pickle_only_adapter_is_refused_without_the_flag(
    tmp_path: Path, tiny_model_dir: Path, layout: str
) -> None:
    """An adapter folder (or a `mipo train` output holding one in model/) whose weights are a
    pickle is refused before anything unpickles it, by path resolution and by load_model."""
    from mipo.errors import ModelError
    from mipo.models import load_model, resolve_model_path

    root = tmp_path / "run"
    adapter = root / "model" if layout == "train-output" else root
    adapter.mkdir(parents=True)
    marker = tmp_path / "marker"
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tiny_model_dir)})
    )
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    for attempt in (
        lambda: resolve_model_path(root),
        lambda: load_model(root, device="cpu"),
    ):
        with pytest.raises(ModelError, match=r"adapter_model\.bin.*arbitrary code.*--allow-pickle"):
            attempt()
    assert not marker.exists()
    assert resolve_model_path(root, allow_pickle=True) == adapter

    (adapter / "adapter_model.bin").unlink()
    with pytest.raises(ModelError, match="holds no adapter weights"):
        resolve_model_path(root, allow_pickle=True)


def test_pickle_adapter_loads_with_the_flag_and_safetensors_win_without_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import torch

    from mipo.models import load_model

    ids = torch.tensor([[1, 2, 3, 4]])
    base, _ = load_model(tiny_model_dir, device="cpu")
    with torch.no_grad():
        base_logits = base(ids).logits

    pickled = _adapter_folder(tiny_model_dir, tmp_path / "pickled", safe=False)
    assert (pickled / "adapter_model.bin").is_file()
    merged, _ = load_model(pickled, device="cpu", allow_pickle=True)
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base_logits)  # the adapter really loaded

    # safetensors plus a hostile .bin: the .bin is never unpickled, with or without the flag.
    safe = _adapter_folder(tiny_model_dir, tmp_path / "safe", safe=True)
    marker = tmp_path / "marker"
    (safe / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    model, _ = load_model(safe, device="cpu")
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base_logits)
    assert not marker.exists()


# --- a full disk during the plan -----------------------------------------------------------------
# Real write failures, not mocks: the run is a subprocess under `ulimit -f` (RLIMIT_FSIZE), so
# every write past the limit fails with EFBIG, the errno a full disk (ENOSPC) or quota shares with
# it. CPython ignores SIGXFSZ, so the process sees the error instead of being killed.


def _under_file_size_limit(
    command: list[str | Path], limit_kib: int, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", 'ulimit -f "$1" && shift && exec "$@"', "_", str(limit_kib)]
        + [str(c) for c in command],
        env={**os.environ, "RAYON_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _assert_one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 distinct prompts (~0.9 MB): one plan part file is far above a 128 KiB limit."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(5000)]
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    with path.open("w") as f:
        for i in range(3000):
            prompt = " ".join(rng.choices(vocab, k=40))
            f.write(json.dumps({"id": f"q{i}", "prompt": prompt}) + "\n")
    return path


@needs_engine
@pytest.mark.parametrize(
    ("limit_kib", "failing_file"),
    [(128, "plan.parquet (part file part-000000.parquet)"), (1, "run.json")],
)
def test_full_disk_during_the_plan_is_one_line_and_leaves_nothing(
    tmp_path: Path, big_corpus: Path, tiny_model_dir: Path, limit_kib: int, failing_file: str
) -> None:
    """The part files (128 KiB limit) or the first small file (1 KiB: run.json) cannot be
    written: one `error:` line naming the file, the folder and `df -h`, exit 2, no traceback,
    and the new output folder is gone (no part files, no temporary files). Rerunning the same
    command without the limit then succeeds."""
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "mipo", "build-pairs", big_corpus, "-o", out,
        "--model", tiny_model_dir, "--plan-only", "--no-progress", "--generation-max-new-tokens", "4",
    ]  # fmt: skip
    done = _under_file_size_limit(command, limit_kib)
    _assert_one_error_line(done, f"cannot write {failing_file} in '{out}'", "df -h", "rerun")
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    rerun = _under_file_size_limit(command, 1 << 20)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert pl.read_parquet(out / "plan.parquet").height == 3000


PLAN_SCRIPT = """
import sys
from mipo import engine
from mipo.corpus import open_corpus
from mipo.errors import OutputError
from mipo.pairs.plan import PlanConfig, build_plan

corpus = open_corpus(sys.argv[1])
tokenizer = engine.ChatTokenizer.from_pretrained(sys.argv[2])
try:
    build_plan(corpus, tokenizer, sys.argv[3], PlanConfig(batch_rows=256))
except OutputError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@needs_engine
def test_full_disk_while_writing_plan_parquet_leaves_no_temporary_file(
    tmp_path: Path, big_corpus: Path, tiny_model_dir: Path
) -> None:
    """Small batches keep each part file under a 512 KiB limit, so the failure comes from the
    final ``plan.parquet`` (pyarrow's writer): same one line, and the folder holds nothing —
    no temporary plan, no ``.plan-parts-*`` folder."""
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "plan.py"
    script.write_text(PLAN_SCRIPT)
    target = out / "plan.parquet"
    done = _under_file_size_limit([sys.executable, script, big_corpus, tiny_model_dir, target], 512)
    _assert_one_error_line(done, f"cannot write plan.parquet in '{out}' (File too large)", "df -h")
    assert list(out.iterdir()) == []


def test_errors_that_are_not_about_the_disk_pass_through(tmp_path: Path) -> None:
    """A frame Polars cannot serialize is a program error, not "check free space"."""
    from mipo.errors import OutputError
    from mipo.io import write_parquet_atomic

    frame = pl.DataFrame({"x": [object()]}, schema={"x": pl.Object})
    with pytest.raises(pl.exceptions.PolarsError) as raised:
        write_parquet_atomic(frame, tmp_path / "x.parquet")
    assert not isinstance(raised.value, OutputError)
    assert list(tmp_path.iterdir()) == []


# --- an input edited in place --------------------------------------------------------------------


@needs_engine
def test_input_edited_in_place_is_detected_even_at_the_same_size(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """The plan options record each input file's size and mtime: an edit that keeps the size is
    a changed plan option (refused, naming the file), and --overwrite rebuilds the plan from the
    new text. An unchanged rerun still continues."""
    data = tmp_path / "corpus.jsonl"
    shutil.copy(corpus, data)
    out = tmp_path / "out"
    args = [data, "-o", out, "--model", tiny_model_dir, "--plan-only", *FAST]
    assert build_pairs(*args).exit_code == 0
    plan_stamp = (out / "plan.parquet").stat().st_mtime_ns
    run = json.loads((out / "run.json").read_text())
    (stamp,) = run["stages"]["plan"]["options"]["input_files"]
    assert stamp == {
        "name": "corpus.jsonl",
        "size": data.stat().st_size,
        "mtime_ns": data.stat().st_mtime_ns,
    }

    again = build_pairs(*args)
    assert again.exit_code == 0, again.stderr
    assert (out / "plan.parquet").stat().st_mtime_ns == plan_stamp  # continued, not rebuilt

    text = data.read_text()
    edited = text.replace("eat before", "EAT BEFORE")
    assert edited != text and len(edited) == len(text)
    data.write_text(edited)
    # Coarse file-system clocks could give the edit the old mtime: make it strictly newer.
    os.utime(data, ns=(stamp["mtime_ns"] + 10**9, stamp["mtime_ns"] + 10**9))
    assert data.stat().st_size == stamp["size"]

    assert_refused(
        build_pairs(*args), "different plan options", "modified corpus.jsonl", "--overwrite"
    )
    assert (out / "plan.parquet").stat().st_mtime_ns == plan_stamp  # refused: nothing touched

    redone = build_pairs(*args, "--overwrite")
    assert redone.exit_code == 0, redone.stderr
    prompts = pl.read_parquet(out / "plan.parquet")["prompt"].to_list()
    assert any("EAT BEFORE" in m["content"] for messages in prompts for m in messages)


@needs_engine
def test_plan_bytes_do_not_depend_on_the_input_mtime(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """The mtime lives only in run.json: a touched copy of the input plans to the same bytes."""
    outs = []
    for name, mtime_s in (("a", 1_000_000_000), ("b", 1_500_000_000)):
        folder = tmp_path / name
        folder.mkdir()
        data = folder / "corpus.jsonl"
        shutil.copy(corpus, data)
        os.utime(data, (mtime_s, mtime_s))
        out = folder / "out"
        result = build_pairs(data, "-o", out, "--model", tiny_model_dir, "--plan-only", *FAST)
        assert result.exit_code == 0, result.stderr
        outs.append(out)
    a, b = outs
    assert (a / "plan.parquet").read_bytes() == (b / "plan.parquet").read_bytes()
    runs = [json.loads((o / "run.json").read_text()) for o in outs]
    assert runs[0]["stages"]["plan"]["hash"] != runs[1]["stages"]["plan"]["hash"]


@needs_engine
def test_merge_accepts_shards_that_read_their_own_copy_of_the_input(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """Shards on two machines each read a copy of the corpus (same name and size, another mtime):
    `mipo merge` still joins them; the generation manifest vouches for the requests."""
    outs = []
    for shard, mtime_s in ((0, 1_000_000_000), (1, 1_500_000_000)):
        machine = tmp_path / f"machine{shard}"
        machine.mkdir()
        data = machine / "corpus.jsonl"
        shutil.copy(corpus, data)
        os.utime(data, (mtime_s, mtime_s))
        out = machine / "out"
        result = build_pairs(
            data, "-o", out, "--model", tiny_model_dir, "--shard", f"{shard}/2", *FAST
        )
        assert result.exit_code == 0, result.stderr
        outs.append(out)
    merged = CliRunner().invoke(cli, ["merge", str(outs[0]), str(outs[1])])
    assert merged.exit_code == 0, merged.stderr
    assert pl.read_parquet(outs[0] / "pairs.parquet").height > 0
