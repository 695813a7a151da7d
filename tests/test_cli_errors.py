"""Bad input to `mipo build-pairs` (issue 6): one clear line on stderr, a non-zero exit, no
traceback, and no output folder left behind. Inputs that are dropped rather than refused (null or
empty prompts, over-long prompts) exit 0 with the count reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from mipo.cli import cli

FAST = ["--generation-backend", "hf", "--generation-max-new-tokens", "4", "--no-progress"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n: int, users: int = 4) -> list[dict]:
    return [
        {"id": f"p{i}", "user_id": f"u{i % users}", "question": f"Question {i} about {i * 7} cats?"}
        for i in range(n)
    ]


def _build(tmp_path: Path, model: Path, source: Path | str, *extra: str) -> tuple[Result, Path]:
    out = tmp_path / "out"
    args = ["build-pairs", str(source), "-o", str(out), "--model", str(model), *FAST, *extra]
    return CliRunner().invoke(cli, args), out


def _refused(result: Result, out: Path, *fragments: str) -> None:
    """Exit != 0, one line 'error: ...' with each fragment, no traceback, no output folder."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a handled error
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def test_missing_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    result, out = _build(tmp_path, tiny_model_dir, tmp_path / "nope.jsonl")
    _refused(result, out, "nope.jsonl' not found")


def test_missing_file_in_a_real_process_prints_no_traceback(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mipo", "build-pairs", str(tmp_path / "x.parquet"), "-o", str(out),
         "--model", str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: input ")
    assert "Traceback" not in proc.stderr and not out.exists()


def test_corrupt_parquet(tmp_path: Path, tiny_model_dir: Path) -> None:
    good = tmp_path / "good.parquet"
    pl.DataFrame(_rows(6)).write_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-20])
    result, out = _build(tmp_path, tiny_model_dir, bad)
    _refused(result, out, "not a readable Parquet file")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_empty_file(tmp_path: Path, tiny_model_dir: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    result, out = _build(tmp_path, tiny_model_dir, path)
    _refused(result, out, "is empty")


def test_one_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    result, out = _build(tmp_path, tiny_model_dir, _jsonl(tmp_path / "one.jsonl", _rows(1)))
    _refused(result, out, "the corpus has 1 row", "at least 2")


def test_invalid_utf8_jsonl(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xc3\x28"}\n{"prompt": "ok too"}\n')
    result, out = _build(tmp_path, tiny_model_dir, path)
    _refused(result, out, "line 2: invalid UTF-8", "re-encode")


def test_truncated_last_jsonl_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "cut.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in _rows(4))
    path.write_text(text[:-15])
    result, out = _build(tmp_path, tiny_model_dir, path)
    _refused(result, out, "line 4 (the last) is cut off")


def test_wrong_column_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = _jsonl(tmp_path / "c.jsonl", _rows(4))
    result, out = _build(tmp_path, tiny_model_dir, source, "--set", "columns.prompt=body")
    _refused(result, out, "column 'body' (columns.prompt) not found", "id, user_id, question")


def test_no_prompt_column_detected(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = _jsonl(tmp_path / "c.jsonl", [{"body": "x", "who": "a"}, {"body": "y", "who": "b"}])
    result, out = _build(tmp_path, tiny_model_dir, source)
    _refused(
        result, out, "no prompt column found", "columns: body, who", "--set columns.prompt=NAME"
    )


def test_null_and_empty_prompts_are_dropped_and_counted(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rows = [*_rows(4), {"id": "n", "question": None}, {"id": "e", "question": "   "}]
    result, out = _build(
        tmp_path, tiny_model_dir, _jsonl(tmp_path / "c.jsonl", rows), "--plan-only"
    )
    assert result.exit_code == 0, result.stderr
    assert "null/empty prompts dropped" in result.output
    plan = json.loads((out / "stats.json").read_text())["plan"]
    assert (plan["empty_dropped"], plan["prompts_planned"]) == (2, 4)


def test_only_null_or_empty_prompts(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"question": None}, {"question": ""}, {"question": " "}]
    result, out = _build(tmp_path, tiny_model_dir, _jsonl(tmp_path / "c.jsonl", rows))
    _refused(result, out, "no usable prompts: all 3 rows have a null or empty prompt")


def test_non_string_prompts(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = _jsonl(tmp_path / "c.jsonl", [{"prompt": 1}, {"prompt": 2}, {"prompt": 3}])
    result, out = _build(tmp_path, tiny_model_dir, source)
    _refused(result, out, "holds Int64 values, not text")


def test_messages_without_content_field(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "text": f"hi {i}"}]} for i in range(3)]
    result, out = _build(tmp_path, tiny_model_dir, _jsonl(tmp_path / "c.jsonl", rows))
    _refused(result, out, "have no content field", "role and a content")


def test_message_without_role(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}]} for i in range(3)]
    rows.append({"messages": [{"content": "who speaks?"}]})
    result, out = _build(tmp_path, tiny_model_dir, _jsonl(tmp_path / "c.jsonl", rows))
    _refused(result, out, "input row 3: a chat message has no role or no content")


def test_prompt_over_the_token_limit_is_dropped_and_counted(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rows = [*_rows(4), {"id": "long", "question": "tell me about cats " * 500}]
    source = _jsonl(tmp_path / "c.jsonl", rows)
    result, out = _build(tmp_path, tiny_model_dir, source, "--plan-only")
    assert result.exit_code == 0, result.stderr
    plan = json.loads((out / "stats.json").read_text())["plan"]
    assert (plan["over_length"], plan["prompts_planned"]) == (1, 4)
    assert plan["max_prompt_tokens"] == 512 - 4  # the model's context minus max_new_tokens
    assert "long" not in pl.read_parquet(out / "plan.parquet")["id"].to_list()


def test_every_prompt_over_the_token_limit(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = _jsonl(tmp_path / "c.jsonl", _rows(4))
    result, out = _build(tmp_path, tiny_model_dir, source, "--set", "max_prompt_tokens=5")
    _refused(result, out, "no prompt left after dropping 4 over max_prompt_tokens=5")


def test_all_duplicates(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"question": "How do I boil an egg?"}, {"question": "how do i  BOIL an egg?"}] * 4
    result, out = _build(tmp_path, tiny_model_dir, _jsonl(tmp_path / "c.jsonl", rows))
    _refused(result, out, "only 1 distinct prompt left of 8 rows", "7 exact")


def test_one_user_holds_more_than_half(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = _rows(10)
    for row in rows[:7]:
        row["user_id"] = "alice"
    result, out = _build(tmp_path, tiny_model_dir, _jsonl(tmp_path / "c.jsonl", rows))
    _refused(result, out, "user 'alice' holds 7 of 10 prompts", "--set user_constraint=false")


def test_unknown_model_path(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "c.jsonl", _rows(4))
    result, out = _build(tmp_path, tmp_path / "no-such-model", source)
    _refused(result, out, "no-such-model", "not found")


def test_tokenizer_without_chat_template(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = tmp_path / "plain-model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    result, out = _build(tmp_path, model, _jsonl(tmp_path / "c.jsonl", _rows(4)))
    _refused(result, out, "chat template")


def test_context_drop_without_context(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = _jsonl(tmp_path / "c.jsonl", _rows(4))
    result, out = _build(tmp_path, tiny_model_dir, source, "--negatives", "context-drop")
    _refused(result, out, "has no context column", "--set columns.context=NAME")


def test_bad_shard_and_contradicting_options(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = _jsonl(tmp_path / "c.jsonl", _rows(4))
    result, out = _build(tmp_path, tiny_model_dir, source, "--shard", "2/2")
    _refused(result, out, "--shard 2/2 is invalid")
    result, out = _build(tmp_path, tiny_model_dir, source, "--set", "min_margin=1")
    _refused(result, out, "min_margin needs --set score=true")


def test_failed_plan_leaves_an_existing_empty_folder_empty(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rows = [{"question": "Same?"}] * 3
    result = CliRunner().invoke(
        cli,
        ["build-pairs", str(_jsonl(tmp_path / "c.jsonl", rows)), "-o", str(out), "--model",
         str(tiny_model_dir), *FAST],
    )  # fmt: skip
    assert result.exit_code != 0 and "distinct prompt" in result.stderr
    assert list(out.iterdir()) == []
