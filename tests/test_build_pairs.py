"""`mipo build-pairs` end to end through the CLI on the tiny local model (and one slow test on the
built-in SmolLM2): plan-only, full run, resume, changed options, shards + merge, and a real TRL
DPOTrainer run on the pairs it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from mipo.cli import cli
from mipo.corpus import MESSAGE_DTYPE
from mipo.prompt_format import PromptFormat

QUESTIONS = [
    "What should I eat before a long run?",
    "How do I read a CSV file in Python?",
    "Which houseplants are safe for cats?",
    "How can I sleep better during the day?",
    "Suggest a cheap dinner plan for the week.",
    "How do I start learning to swim as an adult?",
]
CONTEXTS = [
    "I am a vegetarian marathon runner.",
    "I am a beginner programmer who likes short answers.",
    "I live in a small flat with two cats.",
    "I am a nurse working night shifts.",
    "My budget is tight and I cook for four.",
    None,
]
FAST = [
    "--generation-backend", "hf", "--generation-max-new-tokens", "6",
    "--generation-chunk-size", "2", "--generation-batch-size", "2",
]  # fmt: skip


def _corpus(path: Path) -> Path:
    rows = [
        {"id": f"q{i}", "user_id": f"u{i % 3}", "context": CONTEXTS[i], "question": QUESTIONS[i]}
        for i in range(len(QUESTIONS))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(*args: str | Path) -> object:
    result = CliRunner().invoke(cli, ["build-pairs", *map(str, args), "--no-progress"])
    return result


def _ok(result: object) -> None:
    assert result.exit_code == 0, (result.output, result.stderr)  # type: ignore[attr-defined]


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("chunk-*.parquet"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_model_dir: Path) -> Path:
    """One complete random-negatives run (the tiny model never stops: keep truncated pairs)."""
    out = tmp_path_factory.mktemp("run") / "out"
    _ok(_run(corpus, "-o", out, "--model", tiny_model_dir, "--keep-truncated", *FAST))
    return out


def test_plan_only(tmp_path: Path, corpus: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    result = _run(corpus, "-o", out, "--model", tiny_model_dir, "--plan-only", *FAST)
    _ok(result)
    assert "prompts planned" in result.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in out.iterdir()) == ["plan.parquet", "run.json", "stats.json"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["plan"]["prompts_planned"] == 6 and stats["plan"]["users"] == 3
    assert stats["stages"]["plan"]["peak_rss_mb"] > 0
    assert set(stats["stages"]["plan"]["step_seconds"]) == {
        "read", "dedup", "tokenize", "derange", "write"
    }  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["fingerprint"] and run["seed"] == 0
    assert run["stages"]["plan"]["options"]["columns"]["user"] == "user_id"


def test_full_run_writes_trl_ready_pairs(full_run: Path) -> None:
    from mipo.generate import load_results

    pairs = pl.read_parquet(full_run / "pairs.parquet")
    plan = pl.read_parquet(full_run / "plan.parquet")
    stats = json.loads((full_run / "stats.json").read_text())
    # The random tiny model sometimes answers only whitespace: those pairs are filtered, counted.
    assert pairs.height == 6 - sum(stats["pairs"]["filtered"].values()) >= 2
    assert stats["pairs"]["pairs_written"] == pairs.height
    for column in ("prompt", "chosen", "rejected"):
        assert pairs.schema[column] == MESSAGE_DTYPE
    assert pairs.columns[:3] == ["prompt", "chosen", "rejected"]
    assert set(pairs["strategy"]) == {"random"}
    # Reuse: chosen of i is the response to i, rejected of i the response to σ(i) (request 4·σ(i)).
    responses = dict(
        load_results(full_run / "generations").select("request_id", "response").iter_rows()
    )
    index = dict(zip(plan["id"], plan["plan_index"], strict=True))
    for row in pairs.iter_rows(named=True):
        assert row["chosen"][0]["content"] == responses[4 * index[row["id"]]]
        assert row["rejected"][0]["content"] == responses[4 * index[row["negative_id"]]]
        assert row["prompt"] == plan["prompt"][index[row["id"]]].to_list()
    users = dict(zip(plan["id"], plan["user_id"], strict=True))
    assert all(users[a] != users[b] for a, b in zip(pairs["id"], pairs["negative_id"], strict=True))
    assert stats["generate"]["responses"] == 6
    assert set(stats["stages"]) == {"plan", "generate", "pairs"}


def test_rerun_resumes_without_regenerating(
    tmp_path: Path, full_run: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    before = _mtimes(out / "generations")
    reference = (out / "pairs.parquet").read_bytes()
    args = [corpus, "-o", out, "--model", tiny_model_dir, "--keep-truncated", *FAST]

    _ok(_run(*args))  # everything done: nothing is redone
    assert _mtimes(out / "generations") == before

    # An interrupted run: one chunk and the pairs are missing. Only that chunk is generated again.
    (out / "generations" / "chunk-000001.parquet").unlink()
    (out / "pairs.parquet").unlink()
    _ok(_run(*args))
    after = _mtimes(out / "generations")
    assert {k: v for k, v in after.items() if k != "chunk-000001.parquet"} == {
        k: v for k, v in before.items() if k != "chunk-000001.parquet"
    }
    assert after["chunk-000001.parquet"] != before["chunk-000001.parquet"]
    assert (out / "pairs.parquet").read_bytes() == reference


def test_changed_options_are_refused_unless_overwrite(
    tmp_path: Path, full_run: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    before = _mtimes(out / "generations")
    base = [corpus, "-o", out, "--model", tiny_model_dir, *FAST]

    result = _run(*base, "--keep-truncated", "--generation-temperature", "0.7")
    assert result.exit_code != 0  # type: ignore[attr-defined]
    assert "holds a run with different generate options" in result.stderr  # type: ignore[attr-defined]
    assert "temperature" in result.stderr and "--overwrite" in result.stderr  # type: ignore[attr-defined]
    assert _mtimes(out / "generations") == before

    # Only a pairs option changes: --overwrite redoes the pairs and keeps the generations. The
    # tiny model never stops, so every pair left after the empty filter is truncated: no pair is
    # left, which is an error naming the filter and the options that change it (issue 22, item 9),
    # and no empty pairs file is left for the next stage to fail on.
    result = _run(*base, "--overwrite")
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    message = result.stderr  # type: ignore[attr-defined]
    assert message.count("\n") == 1 and "Traceback" not in message
    assert "0 pairs left: the truncated filter dropped" in message
    assert "--generation-max-new-tokens" in message and "--keep-truncated" in message
    assert _mtimes(out / "generations") == before
    stats = json.loads((out / "stats.json").read_text())
    assert (
        stats["pairs"]["filtered"]["truncated"] == 6 - stats["pairs"]["filtered"]["empty_response"]
    )
    assert stats["pairs"]["pairs_written"] == 0
    assert not (out / "pairs.parquet").exists()
    # Rerunning the same command says the same again (nothing was taken for finished).
    again = _run(*base)
    assert again.exit_code == 2 and again.stderr == message  # type: ignore[attr-defined]

    # A plan option changes: everything is redone.
    _ok(_run(*base, "--seed", "1", "--keep-truncated", "--overwrite"))
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 1


def test_output_folder_of_something_else_is_refused(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = _run(corpus, "-o", out, "--model", tiny_model_dir, "--plan-only", *FAST)
    assert result.exit_code != 0  # type: ignore[attr-defined]
    assert "is not empty and holds no mipo run" in result.stderr  # type: ignore[attr-defined]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_shards_into_one_folder_and_merge_of_separate_folders(
    tmp_path: Path, full_run: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    reference = pl.read_parquet(full_run / "pairs.parquet")
    args = [corpus, "--model", tiny_model_dir, "--keep-truncated", *FAST]

    shared = tmp_path / "shared"
    first = _run(*args, "-o", shared, "--shard", "0/2")
    _ok(first)
    assert "mipo merge" in first.output and "chunks missing (1)" in first.output  # type: ignore[attr-defined]
    assert not (shared / "pairs.parquet").exists()
    _ok(_run(*args, "-o", shared, "--shard", "1/2"))  # the last shard builds the pairs
    assert pl.read_parquet(shared / "pairs.parquet").equals(reference)

    # Shards on different machines: separate folders, then `mipo merge`.
    a, b = tmp_path / "a", tmp_path / "b"
    _ok(_run(*args, "-o", a, "--shard", "0/2"))
    missing = CliRunner().invoke(cli, ["merge", str(a)])
    assert missing.exit_code != 0 and "chunks missing (1)" in missing.stderr
    _ok(_run(*args, "-o", b, "--shard", "1/2"))
    merged = CliRunner().invoke(cli, ["merge", str(a), str(b)])
    _ok(merged)
    assert pl.read_parquet(a / "pairs.parquet").equals(reference)


def test_both_strategies_with_independent_negatives(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    _ok(
        _run(
            corpus,
            "-o",
            out,
            "--model",
            tiny_model_dir,
            "--negatives",
            "both",
            "--set",
            "independent_negatives=true",
            "--keep-truncated",
            *FAST,
        )
    )
    stats = json.loads((out / "stats.json").read_text())
    # 6 full prompts + 5 without context (one row has none) + 6 independent negatives.
    assert stats["generate"]["requests"] == 17
    assert stats["pairs"]["pairs_built"] == {"random": 6, "context-drop": 5}
    assert stats["pairs"]["no_context_skipped"] == 1
    pairs = pl.read_parquet(out / "pairs.parquet")
    drop = pairs.filter(pl.col("strategy") == "context-drop")
    # The pair keeps the full prompt (with its context), not the one its negative answered.
    plan = pl.read_parquet(out / "plan.parquet")
    full = dict(zip(plan["id"].to_list(), plan["prompt"].to_list(), strict=True))
    bare = dict(zip(plan["id"].to_list(), plan["prompt_nocontext"].to_list(), strict=True))
    assert all(full[i] != bare[i] for i in drop["id"].to_list())
    assert [full[i] for i in drop["id"].to_list()] == drop["prompt"].to_list()


def test_context_swap_pairs_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Users 0-2 all ask one question (their responses are each other's negatives); the other
    questions are unique (a response to the question with another user's context is generated)."""
    rows = [
        {"id": f"s{u}", "user_id": f"u{u}", "context": CONTEXTS[u], "question": QUESTIONS[3]}
        for u in range(3)
    ] + [
        {"id": f"o{u}", "user_id": f"u{u}", "context": CONTEXTS[u], "question": QUESTIONS[u]}
        for u in range(3)
    ]
    corpus = tmp_path / "swap.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ["--model", tiny_model_dir, "--negatives", "context-swap", "--keep-truncated", *FAST]
    result = _run(corpus, "-o", out, *args)
    _ok(result)
    assert "context swaps reusing another user's response" in result.output  # type: ignore[attr-defined]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["plan"]["swaps_reused"], stats["plan"]["swaps_generated"]) == (3, 3)
    assert stats["generate"]["requests"] == 6 + 3  # one per prompt + three generated swaps
    assert stats["pairs"]["swap_sources"] == {"reused": 3, "generated": 3}
    pairs = pl.read_parquet(out / "pairs.parquet")
    plan = pl.read_parquet(out / "plan.parquet")
    chosen = {r["id"]: r["chosen"][0]["content"] for r in pairs.iter_rows(named=True)}
    for row in pairs.iter_rows(named=True):
        assert row["strategy"] == "context-swap"
        if row["id"].startswith("s"):
            # Reused: the rejected answer is the other user's own chosen answer.
            assert row["rejected"][0]["content"] == chosen[row["negative_id"]]
            assert row["negative_id"].startswith("s") and row["negative_id"] != row["id"]
        else:
            source = plan.filter(pl.col("id") == row["id"])["swap_source"].item()
            assert source == "generated"
    # The DPO pairs keep the user's own prompt (their context, the default format) for both.
    question = {r["id"]: [{"role": "user", "content": r["question"]}] for r in rows}
    own = {r["id"]: PromptFormat().messages(r["context"], question[r["id"]]) for r in rows}
    assert all(own[i] == p for i, p in zip(pairs["id"], pairs["prompt"].to_list(), strict=True))
    # Rerun: nothing to do; the same pairs.
    _ok(_run(corpus, "-o", out, *args))
    assert pl.read_parquet(out / "pairs.parquet").equals(pairs)


def test_ray_executor_writes_the_same_pairs_as_the_local_one(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray", reason="--executor ray needs ray (pip install 'mipo[ray]')")
    import torch

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray runtime for this run only
    # Sampling (temperature 1) so the per-row seeds matter, and a 1-thread local reference:
    # each 1-CPU Ray actor runs torch on one thread.
    args = [
        corpus,
        "--model",
        tiny_model_dir,
        "--keep-truncated",
        "--generation-temperature",
        "1",
        *FAST,
    ]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _ok(_run(*args, "-o", tmp_path / "local"))
    finally:
        torch.set_num_threads(before)
    _ok(_run(*args, "-o", tmp_path / "ray", "--executor", "ray", "--num-workers", "2"))

    local, ray = tmp_path / "local", tmp_path / "ray"
    assert (ray / "pairs.parquet").read_bytes() == (local / "pairs.parquet").read_bytes()
    chunks = sorted(p.name for p in (local / "generations").glob("chunk-*.parquet"))
    assert len(chunks) == 3  # 6 requests, 2 per chunk: the two actors shared the work
    for name in chunks:
        assert (ray / "generations" / name).read_bytes() == (
            local / "generations" / name
        ).read_bytes()
    assert pl.read_parquet(ray / "pairs.parquet").height >= 2
    stats = json.loads((ray / "stats.json").read_text())
    assert stats["stages"]["generate"]["executor"] == "ray"
    # The executor is not a run option: the local folder continues under Ray with nothing to redo.
    before_mtimes = _mtimes(local / "generations")
    _ok(_run(*args, "-o", local, "--executor", "ray"))
    assert _mtimes(local / "generations") == before_mtimes


def test_executor_options_are_checked_before_anything_is_written(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    out = tmp_path / "out"
    base = [corpus, "-o", out, "--model", tiny_model_dir, *FAST]
    result = _run(*base, "--num-workers", "2")
    assert result.exit_code != 0  # type: ignore[attr-defined]
    assert "--num-workers applies to Ray workers only" in result.stderr  # type: ignore[attr-defined]
    result = _run(*base, "--set", "ray_address=auto")
    assert "ray_address applies to Ray workers only" in result.stderr  # type: ignore[attr-defined]

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    result = _run(*base, "--executor", "ray")
    assert result.exit_code != 0  # type: ignore[attr-defined]
    assert "pip install 'mipo[ray]'" in result.stderr  # type: ignore[attr-defined]
    assert not out.exists()


def test_trl_dpo_trainer_runs_on_the_pairs(
    tmp_path: Path, full_run: Path, tiny_model_dir: Path
) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_parquet(str(full_run / "pairs.parquet"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    output = trainer.train()
    assert output.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    changed = any(not p.detach().equal(b) for p, b in zip(model.parameters(), before, strict=True))
    assert changed


@pytest.mark.slow
def test_builtin_model_on_the_sample_corpus(tmp_path: Path, smollm2_dir: Path) -> None:
    from mipo.synth import SAMPLE_CORPUS_PATH

    sample = tmp_path / "sample.jsonl"
    # Eight rows from eight different users (the corpus lists each user's rows together).
    lines = SAMPLE_CORPUS_PATH.read_text(encoding="utf-8").splitlines()[::40][:8]
    sample.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = _run(
        sample,
        "-o",
        out,
        "--model",
        smollm2_dir,
        "--negatives",
        "both",
        "--generation-backend",
        "hf",
        "--generation-max-new-tokens",
        "32",
        "--keep-truncated",
    )
    _ok(result)
    pairs = pl.read_parquet(out / "pairs.parquet")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["plan"]["rows_in"] == 8
    assert pairs.height >= 8
    # A real instruct model answers in words, and answers differ between prompts.
    texts = [c[0]["content"] for c in pairs["chosen"].to_list()]
    assert all(len(t.split()) >= 3 for t in texts)
    assert len(set(texts)) >= 4


def test_model_loading_bars_only_with_verbose(
    tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """transformers' "Loading weights" bar is off unless --verbose (mipo's own output stays)."""
    args = [corpus, "--model", tiny_model_dir, "--keep-truncated", *FAST]
    quiet = _run(*args, "-o", tmp_path / "quiet")
    loud = _run(*args, "-o", tmp_path / "loud", "--verbose")
    _ok(quiet)
    _ok(loud)
    assert "Loading weights" in loud.stderr  # type: ignore[attr-defined]
    assert "Loading weights" not in quiet.stderr  # type: ignore[attr-defined]
    assert "pairs" in quiet.output  # type: ignore[attr-defined]


MATH = [
    "Ann has 3.5 kg of rice. She cooks 0.5 kg a day. How many days does the rice last?",
    "Mr. Lee buys 4 pens at $2 each. He pays with a $10 note. How much change does he get?",
    "A train covers 60 km in 1.5 hours. What is its average speed?",
    "What is 12 times 4?",
    "Dr. Ng reads 20 pages a day. Her book has 300 pages. She has read 120. How many days remain?",
]


def test_sentence_drop_pairs_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Math questions: each rejected response answers the question with one non-final sentence
    removed (the single-sentence question gets no pair), scored under the full question."""
    from mipo import engine
    from mipo.generate import GenerationConfig, load_results
    from mipo.pairs import build_requests
    from mipo.pairs.assemble import SENTENCE_DROP_OFFSET
    from mipo.pairs.build import build_pairs
    from mipo.pairs.config import BuildPairsConfig
    from mipo.pairs.negatives import split_sentences
    from mipo.pairs.plan import read_plan

    corpus = tmp_path / "math.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"m{i}", "question": q}) + "\n" for i, q in enumerate(MATH))
    )
    out = tmp_path / "out"
    generation = GenerationConfig(backend="hf", max_new_tokens=6, chunk_size=2, batch_size=2)
    config = BuildPairsConfig(
        str(corpus), out, model=str(tiny_model_dir), negatives="sentence-drop", seed=3,
        keep_truncated=True, generation=generation, progress=False,
    )  # fmt: skip
    assert build_pairs(config).completed == "pairs"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generate"]["requests"] == 5 + 4
    assert stats["pairs"]["pairs_built"] == {"sentence-drop": 4}
    assert stats["pairs"]["no_sentence_skipped"] == 1
    pairs = pl.read_parquet(out / "pairs.parquet")
    assert pairs["strategy"].unique().to_list() == ["sentence-drop"]
    assert sorted(pairs["id"].to_list()) == ["m0", "m1", "m2", "m4"]

    tokenizer = engine.ChatTokenizer.from_pretrained(tiny_model_dir)
    plan = read_plan(out / "plan.parquet")
    requests = build_requests(
        plan, strategy="sentence-drop", independent_negatives=False, seed=3, tokenizer=tokenizer
    )
    by_id = {r["request_id"]: r for r in requests.iter_rows(named=True)}
    generated = {
        r["request_id"]: r for r in load_results(out / "generations").iter_rows(named=True)
    }

    def encode(text: str) -> list[int]:
        messages = pl.Series([[{"role": "user", "content": text}]], dtype=MESSAGE_DTYPE)
        return tokenizer.encode_chat(messages)["input_ids"][0].to_list()

    index_of = dict(zip(plan["id"].to_list(), plan["plan_index"].to_list(), strict=True))
    for row in pairs.iter_rows(named=True):
        question = MATH[int(row["id"][1:])]
        assert row["prompt"] == [{"role": "user", "content": question}]  # the full x
        request = SENTENCE_DROP_OFFSET + index_of[row["id"]]
        # The pair's rejected response is the one generated for the sentence-drop request ...
        assert row["rejected_seed"] == by_id[request]["seed"] == generated[request]["seed"]
        assert row["rejected"][0]["content"] == generated[request]["response"]
        assert generated[request]["num_prompt_tokens"] == len(by_id[request]["input_ids"])
        # ... whose prompt is the question without exactly one of its non-final sentences.
        sentences = split_sentences(question)
        without = [
            k
            for k in range(len(sentences))
            if by_id[request]["input_ids"]
            == encode("".join(sentences[:k] + sentences[k + 1 :]).strip())
        ]
        assert len(without) == 1 and without[0] < len(sentences) - 1
    assert by_id[index_of["m0"] * 4]["input_ids"] == encode(MATH[0])
