"""mipo.progress: plain timestamped lines off a terminal at a steady rhythm, the live display on
one; and real stages (training, generation, scoring, judging) writing those lines to a file."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from mipo.errors import ConfigError
from mipo.progress import INTERVAL_ENV, Display, off, track

STAMP = r"^\[\d\d:\d\d:\d\d\] "


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stream(io.StringIO):
    """A stream that counts its flushes and says whether it is a terminal."""

    def __init__(self, *, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty
        self.flushes = 0

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def lines_of(stream: Stream) -> list[str]:
    return stream.getvalue().splitlines()


def test_lines_come_at_start_every_interval_and_end_each_flushed() -> None:
    clock, stream = FakeClock(), Stream()
    with Display(stream=stream, clock=clock, interval=30) as display:
        assert display.mode == "lines"
        task = display.task("training", total=50, unit="step")
        for step in range(1, 51):
            clock.now += 2.0  # 2 s a step
            task.update(done=step, detail=["loss 0.6200", "reward acc 0.75"])
    lines = lines_of(stream)
    assert all(re.match(STAMP, line) for line in lines), lines
    body = [re.sub(STAMP, "", line) for line in lines]
    # start, then steps 15, 30, 45 (30 s apart), then the end: not one line per step
    assert body == [
        "training: 0/50 steps (0%)",
        "training: 15/50 steps (30%), 2.0 s/step, ETA 1m10s, loss 0.6200, reward acc 0.75",
        "training: 30/50 steps (60%), 2.0 s/step, ETA 40s, loss 0.6200, reward acc 0.75",
        "training: 45/50 steps (90%), 2.0 s/step, ETA 10s, loss 0.6200, reward acc 0.75",
        "training: done, 50/50 steps (100%) in 1m40s, 2.0 s/step, loss 0.6200, reward acc 0.75",
    ]
    assert stream.flushes >= len(lines)  # each line reaches a batch log at once


def test_rates_count_only_this_runs_work_and_show_tokens() -> None:
    clock, stream = FakeClock(), Stream()
    with Display(stream=stream, clock=clock, interval=30) as display:
        # a resumed run: 40 rows were there before, 10 more come in 5 s
        task = display.task("generating", total=100, done=40, unit="row", tokens_label="new tok")
        clock.now += 5.0
        task.advance(10, tokens=600)
        assert task.rate_text() == "2.0 rows/s"
        assert task.tokens_text() == "120.0 new tok/s"
        assert task.eta_text() == "ETA 25s"  # 50 rows left at 2 rows/s
        clock.now += 30.0
        task.advance(0)
    body = [re.sub(STAMP, "", line) for line in lines_of(stream)]
    assert body[0] == "generating: 40/100 rows (40%)"
    assert body[1] == "generating: 50/100 rows (50%), 3.5 s/row, 17.1 new tok/s, ETA 2m55s"


def test_uncounted_stages_and_a_stage_stopped_by_an_error() -> None:
    clock, stream = FakeClock(), Stream()
    with pytest.raises(RuntimeError), Display(stream=stream, clock=clock, interval=30) as display:
        loading = display.task("loading", detail=["model and pairs"])
        clock.now += 3.0
        task = display.task("training", total=4, unit="step")
        loading.finish()
        clock.now += 1.0
        task.update(done=1)
        raise RuntimeError("boom")
    body = [re.sub(STAMP, "", line) for line in lines_of(stream)]
    assert body == [
        "loading: model and pairs",
        "training: 0/4 steps (0%)",
        "loading: done in 3s, model and pairs",
        "training: stopped, 1/4 steps (25%) in 1s, 1.0 steps/s",
    ]


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert Display(stream=Stream()).interval == 5.0
    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line at every update
    stream = Stream()
    with track("scoring", total=3, unit="sequence", stream=stream) as task:
        for _ in range(3):
            task.advance()
    assert len(lines_of(stream)) == 1 + 3 + 1
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ConfigError, match=f"{INTERVAL_ENV} must be a number of seconds"):
            Display(stream=Stream())


def test_a_terminal_gets_the_live_display_and_no_plain_lines() -> None:
    stream = Stream(tty=True)
    with Display(stream=stream, interval=0) as display:
        assert display.mode == "live"
        task = display.task("training", total=5, unit="step")
        for step in range(1, 6):
            task.update(done=step, detail=["loss 0.6931"])
        # a stage nested in a live one joins it (rich allows one live display at a time)
        with track("scoring", total=2, unit="sequence") as inner:
            inner.advance(2)
    text = stream.getvalue()
    assert "training" in text and "5/5" in text and "loss 0.6931" in text and "scoring" in text
    assert not any(re.match(STAMP, line) for line in text.splitlines())


def test_nothing_when_disabled_or_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "30")
    stream = Stream()
    with track("judging", total=2, enabled=False, stream=stream) as task:
        task.advance(2)
    with off(), track("judging", total=2, stream=stream) as task:
        task.advance(2)
    with off(False), track("judging", total=2, stream=stream) as task:
        task.advance(2)
    assert [re.sub(STAMP, "", line) for line in lines_of(stream)][-1].startswith(
        "judging: done, 2/2 rows"
    )
    assert len(lines_of(stream)) == 2  # only the last block showed anything


# --- real stages, stderr redirected to a file ---------------------------------------------------


QUESTIONS = [
    "What should I eat before a run?",
    "How do I read a CSV file?",
    "Which plants are safe for cats?",
    "How can I sleep better during the day?",
]
CONTEXTS = [
    "I am a vegetarian runner.",
    "I am a beginner programmer.",
    "I live in a small flat with two cats.",
    "I am a nurse working night shifts.",
]
ANSWERS = ["Oats with a banana.", "Use the csv module.", "Toast and honey.", "Try pandas."]


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    with path.open("w") as log, contextlib.redirect_stderr(log):
        yield


def test_cli_train_writes_progress_lines_to_a_log_file(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mipo.cli import cli

    rows = [
        {
            "prompt": [
                {"role": "system", "content": CONTEXTS[i]},
                {"role": "user", "content": QUESTIONS[i]},
            ],
            "chosen": [{"role": "assistant", "content": ANSWERS[i]}],
            "rejected": [{"role": "assistant", "content": ANSWERS[(i + 1) % 4]}],
        }
        for i in range(4)
    ]
    pairs = tmp_path / "pairs" / "pairs.parquet"
    pairs.parent.mkdir()
    pl.DataFrame(rows).write_parquet(pairs)
    (pairs.parent / "run.json").write_text(
        json.dumps({"model": {"name": "tiny", "path": str(tiny_model_dir), "fingerprint": ""}})
    )
    monkeypatch.setenv(INTERVAL_ENV, "0")
    log = tmp_path / "log"
    args = ["train", str(pairs), "-o", str(tmp_path / "out"), "--lora", "--max-steps", "2"]
    with stderr_to(log):
        cli.main(args=[*args, "--train-batch-size", "2"], prog_name="mipo", standalone_mode=False)
    lines = log.read_text().splitlines()
    progress = [re.sub(STAMP, "", line) for line in lines if re.match(STAMP, line)]
    assert progress[0].startswith("loading: model and pairs")
    # a line after step 1, carrying that step's metrics, before the end: progress as it happens
    step1 = [line for line in progress if line.startswith("training: 1/2 steps (50%), ")]
    assert step1 and re.search(
        r"(s/step|steps/s), ETA \d+s, loss \d\.\d{4}, margin [+-]\d\.\d{3}, reward acc \d\.\d\d$",
        step1[0],
    )
    assert any(line.startswith("training: done, 2/2 steps (100%) in ") for line in progress)
    assert progress[-1].startswith("saving: done in ")
    assert "\x1b[" not in log.read_text()  # no terminal control codes in a log file


def test_generation_scoring_and_judging_write_progress_lines(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mipo.evaluate.generation import generate_responses
    from mipo.evaluate.judge import judge_scores
    from mipo.generate import GenerationConfig
    from mipo.models import load_model, resolve_model
    from mipo.scoring import pmi_scores

    monkeypatch.setenv(INTERVAL_ENV, "0")
    prompts = [
        [{"role": "system", "content": c}, {"role": "user", "content": q}]
        for c, q in zip(CONTEXTS, QUESTIONS, strict=True)
    ]
    log = tmp_path / "log"
    with stderr_to(log):
        loaded = load_model(tiny_model_dir, device="cpu")
        results = generate_responses(
            resolve_model(str(tiny_model_dir)),
            prompts,
            GenerationConfig(
                backend="hf", max_new_tokens=4, temperature=1.0, batch_size=2, device="cpu"
            ),
            progress="eval: generating",
        )
        texts = [r.text for r in results]
        pmi_scores(loaded, prompts, texts, k=2, batch_size=4, progress="eval: scoring PMI")
        judge_scores(loaded, CONTEXTS, QUESTIONS, texts, batch_size=3, progress="eval: judging")
    body = [re.sub(STAMP, "", line) for line in log.read_text().splitlines()]
    assert "eval: generating: 0/4 responses (0%)" in body
    # the hf backend reports tokens at each decoding step: lines move inside a batch
    assert any(
        re.match(r"eval: generating: 0/4 responses \(0%\), [\d.]+ new tok/s$", b) for b in body
    )
    assert any(re.match(r"eval: generating: 2/4 responses \(50%\), .*new tok/s", b) for b in body)
    # 4 responses under their own prompt + 2 random contrasts each
    assert any(b.startswith("eval: scoring PMI: 4/12 sequences (33%), ") for b in body)
    assert any(b.startswith("eval: scoring PMI: done, 12/12 sequences") for b in body)
    assert any(b.startswith("eval: judging: 3/4 responses (75%)") for b in body)
    assert any(b.startswith("eval: judging: done, 4/4 responses") for b in body)


def test_cli_build_pairs_writes_plan_and_generation_lines(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mipo.cli import cli

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "user_id": f"u{i % 2}", "context": c, "question": q}) + "\n"
            for i, (c, q) in enumerate(zip(CONTEXTS, QUESTIONS, strict=True))
        )
    )
    monkeypatch.setenv(INTERVAL_ENV, "0")
    log = tmp_path / "log"
    args = ["build-pairs", str(corpus), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    fast = [
        "--generation-backend", "hf", "--generation-max-new-tokens", "4",
        "--generation-chunk-size", "2", "--generation-batch-size", "2",
    ]  # fmt: skip
    with stderr_to(log):
        cli.main(args=[*args, *fast, "--keep-truncated"], prog_name="mipo", standalone_mode=False)
    body = [
        re.sub(STAMP, "", line) for line in log.read_text().splitlines() if re.match(STAMP, line)
    ]
    # the plan's passes end in order, each with its rows and rate
    ends = [b.split(":")[1].strip() for b in body if re.match(r"plan: \w+: done, ", b)]
    assert ends == ["read", "tokenize", "derange", "write"]
    # JSONL: rows counted as read, no total known until the pass ends
    assert re.match(r"plan: read: 4 rows, [\d,.]+ rows/s$", body[0]), body
    assert any(b.startswith("plan: read: done, 4/4 rows (100%) in ") for b in body), body
    assert not any(b.startswith("plan: derange: 4/4") for b in body)  # only its end line
    assert "generating: 0/4 rows (0%)" in body
    assert any(re.match(r"generating: 2/4 rows \(50%\), .*new tok/s, ETA \d+s$", b) for b in body)
    assert any(b.startswith("generating: done, 4/4 rows (100%) in ") for b in body)
