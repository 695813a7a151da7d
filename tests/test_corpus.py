"""Reading, column mapping and validation of input corpora (mipo.corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mipo.corpus import (
    MESSAGE_DTYPE,
    ColumnOptions,
    detect_columns,
    open_corpus,
    resolve_input_files,
)
from mipo.errors import ConfigError, CorpusError

ROWS = [
    {"id": "a", "user_id": "u1", "context": "I am a nurse.", "question": "How to sleep by day?"},
    {"id": "b", "user_id": "u2", "context": None, "question": "How do I read a CSV file?"},
    {"id": "c", "user_id": "u1", "context": "", "question": "   "},
    {"id": "d", "user_id": "u3", "context": "I run.", "question": None},
]


def _frame() -> pl.DataFrame:
    return pl.DataFrame(ROWS, schema={k: pl.String for k in ROWS[0]})


def _write(frame: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    elif path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)
    return path


def _standard(spec: str | Path, **columns: str) -> pl.DataFrame:
    corpus = open_corpus(spec, ColumnOptions(**columns))
    return corpus.collect(corpus.standardized())


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_every_format_maps_to_the_same_messages(tmp_path: Path, suffix: str) -> None:
    df = _standard(_write(_frame(), tmp_path / f"corpus{suffix}"))
    assert df["id"].to_list() == ["a", "b", "c", "d"]
    assert df["row"].to_list() == [0, 1, 2, 3]
    assert df.schema["prompt"] == MESSAGE_DTYPE
    # The default format: the context opens the user's own turn (mipo.prompt_format).
    assert df["prompt"][0].to_list() == [
        {"role": "user", "content": "I am a nurse.\n\nHow to sleep by day?"},
    ]
    assert df["context_text"][0] == "I am a nurse."
    # No (or an empty) context: the user message alone, and nothing to drop.
    assert df["prompt"][1].to_list() == [{"role": "user", "content": "How do I read a CSV file?"}]
    assert df["has_context"].to_list() == [True, False, False, True]
    assert df["prompt_nocontext"][0].to_list() == [
        {"role": "user", "content": "How to sleep by day?"}
    ]
    # Blank and null prompts are flagged for dropping.
    assert df["is_empty"].to_list() == [False, False, True, True]
    assert df["dedup_text"][0] == "I am a nurse.\nHow to sleep by day?"
    assert df["user_id"].to_list() == ["u1", "u2", "u1", "u3"]


def test_folder_and_glob_read_all_shards_in_order(tmp_path: Path) -> None:
    frame = _frame()
    shards = tmp_path / "shards"
    shards.mkdir()
    frame.slice(0, 2).write_parquet(shards / "part-0.parquet")
    frame.slice(2, 2).write_parquet(shards / "part-1.parquet")
    (shards / "_SUCCESS").write_text("")
    (shards / ".hidden.parquet").write_bytes(b"not parquet")
    by_folder = _standard(shards)
    by_glob = _standard(str(shards / "part-*.parquet"))
    assert by_folder["id"].to_list() == ["a", "b", "c", "d"]
    assert by_folder["row"].to_list() == [0, 1, 2, 3]
    assert by_glob.equals(by_folder)


def test_folder_with_mixed_formats_is_refused(tmp_path: Path) -> None:
    _write(_frame(), tmp_path / "a.parquet")
    _write(_frame(), tmp_path / "b.jsonl")
    with pytest.raises(CorpusError, match="mixes file types"):
        resolve_input_files(tmp_path)


def test_missing_input_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        open_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(CorpusError, match="no files match"):
        open_corpus(str(tmp_path / "*.parquet"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CorpusError, match="unsupported type"):
        open_corpus(tmp_path / "notes.txt")


def test_detection_prefers_common_names_and_explicit_options_win() -> None:
    found = detect_columns(["uid", "Question", "persona", "author"], ColumnOptions())
    assert (found.prompt, found.context, found.user, found.id) == (
        "Question",
        "persona",
        "author",
        "uid",
    )
    # A prompt column wins over a messages column (which may hold the answer too).
    assert detect_columns(["messages", "prompt"], ColumnOptions()).prompt == "prompt"
    assert detect_columns(["chat"], ColumnOptions()).messages == "chat"
    explicit = detect_columns(["q", "prompt", "bio"], ColumnOptions(prompt="q", context="bio"))
    assert (explicit.prompt, explicit.context) == ("q", "bio")


def test_wrong_column_names_list_the_columns_that_exist() -> None:
    with pytest.raises(CorpusError, match=r"column 'qq' \(columns\.prompt\) not found.*: a, b"):
        detect_columns(["a", "b"], ColumnOptions(prompt="qq"))
    with pytest.raises(CorpusError, match=r"no prompt column found.*the input has columns: a, b"):
        detect_columns(["a", "b"], ColumnOptions())
    with pytest.raises(ConfigError, match="pass only one"):
        ColumnOptions(prompt="a", messages="b")


def test_messages_column_and_its_context_drop(tmp_path: Path) -> None:
    rows = [
        {
            "conversation": [
                {"role": "system", "content": "I am vegan.", "name": "x"},
                {"role": "user", "content": "Dinner idea?", "name": "y"},
            ]
        },
        {"conversation": [{"role": "user", "content": "Hello", "name": "z"}]},
        {"conversation": []},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = _standard(path, context_format="raw-system")
    assert df.schema["prompt"] == MESSAGE_DTYPE  # extra fields dropped: TRL takes role/content
    assert df["prompt"][0].to_list()[1] == {"role": "user", "content": "Dinner idea?"}
    assert df["prompt_nocontext"][0].to_list() == [{"role": "user", "content": "Dinner idea?"}]
    assert df["has_context"].to_list() == [True, False, False]
    assert df["is_empty"].to_list() == [False, False, True]


def test_messages_as_json_text_in_csv(tmp_path: Path) -> None:
    messages = json.dumps([{"role": "user", "content": "Hi there"}])
    pl.DataFrame({"messages": [messages]}).write_csv(tmp_path / "c.csv")
    df = _standard(tmp_path / "c.csv")
    assert df["prompt"][0].to_list() == [{"role": "user", "content": "Hi there"}]


def test_messages_without_content_field_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "text": "hi"}]}) + "\n")
    with pytest.raises(CorpusError, match="have no content field"):
        open_corpus(path)


def test_message_with_null_role_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        + "\n"
        + json.dumps({"messages": [{"content": "no role"}]})
        + "\n"
    )
    assert _standard(path)["bad_message"].to_list() == [False, True]


def test_invalid_utf8_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9 \xff"}\n')
    with pytest.raises(CorpusError, match=r"line 2: invalid UTF-8 \(byte 0xe9"):
        corpus = open_corpus(path)
        corpus.collect(corpus.standardized())


def test_truncated_last_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text('{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": "thr')
    with pytest.raises(CorpusError, match=r"line 3 \(the last\) is cut off"):
        corpus = open_corpus(path)
        corpus.collect(corpus.standardized())


def test_corrupt_parquet(tmp_path: Path) -> None:
    good = _write(_frame(), tmp_path / "good.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorpusError, match="not a readable Parquet file"):
        open_corpus(bad)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(CorpusError, match="is empty"):
        open_corpus(path)


def test_whitespace_only_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="no JSON lines"):
        open_corpus(path)


def test_non_string_prompt_column(tmp_path: Path) -> None:
    path = tmp_path / "ints.jsonl"
    path.write_text('{"prompt": 1}\n{"prompt": 2}\n')
    with pytest.raises(CorpusError, match="holds Int64 values, not text"):
        open_corpus(path)
    nested = tmp_path / "nested.parquet"
    pl.DataFrame({"question": ["q"], "context": [[1, 2]]}).write_parquet(nested)
    with pytest.raises(CorpusError, match=r"column 'context' \(context\) holds List"):
        open_corpus(nested)


def test_numeric_ids_and_users_become_text(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    pl.DataFrame({"id": [10, 11], "user": [1, 2], "prompt": ["x", "y"]}).write_parquet(path)
    df = _standard(path)
    assert df["id"].to_list() == ["10", "11"]
    assert df["user_id"].to_list() == ["1", "2"]


def test_without_id_column_the_row_number_is_the_id(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x"}\n{"prompt": "y"}\n')
    assert _standard(path)["id"].to_list() == ["0", "1"]


# --- compressed inputs and the Parquet pull reader -----------------------------------------------


def _compress(path: Path, codec: str) -> Path:
    """``path`` compressed beside it as ``path.gz`` / ``path.zst`` (zstd through pyarrow)."""
    import gzip

    import pyarrow as pa

    data = path.read_bytes()
    if codec == "gzip":
        target = path.with_name(path.name + ".gz")
        target.write_bytes(gzip.compress(data))
    else:
        target = path.with_name(path.name + ".zst")
        with pa.CompressedOutputStream(str(target), "zstd") as out:
            out.write(data)
    return target


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_compressed_text_reads_as_the_plain_file(tmp_path: Path, suffix: str, codec: str) -> None:
    plain = _write(_frame(), tmp_path / f"corpus{suffix}")
    packed = _compress(plain, codec)
    plain_corpus, packed_corpus = open_corpus(plain), open_corpus(packed)
    assert packed_corpus.format == plain_corpus.format
    assert packed_corpus.schema == plain_corpus.schema
    expected = plain_corpus.collect(plain_corpus.standardized())
    assert packed_corpus.collect(packed_corpus.standardized()).equals(expected)
    batches = list(packed_corpus.standardized_batches(None, 3))
    assert [b.height for b in batches] == [3, 1]
    assert pl.concat(batches).equals(expected)


def test_compressed_suffixes_name_the_format(tmp_path: Path) -> None:
    plain = _write(_frame(), tmp_path / "a.jsonl")
    packed = _compress(plain, "gzip")
    (tmp_path / "b.ndjson.zst").write_bytes(_compress(plain, "zstd").read_bytes())
    (tmp_path / "a.jsonl.zst").unlink()
    assert resolve_input_files(packed) == ([packed], "ndjson")
    # Compression is no format: plain and compressed shards of one format share an input.
    files, fmt = resolve_input_files(tmp_path)
    assert [p.name for p in files] == ["a.jsonl", "a.jsonl.gz", "b.ndjson.zst"] and fmt == "ndjson"
    assert _standard(tmp_path)["id"].to_list() == ["a", "b", "c", "d"] * 3
    _write(_frame(), tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match=r"mixes file types \(ndjson, parquet\)"):
        resolve_input_files(tmp_path)
    gz_parquet = tmp_path / "c.parquet.gz"
    gz_parquet.write_bytes(b"\x1f\x8b")
    with pytest.raises(CorpusError, match=r"unsupported type; supported: .*also as \.gz or \.zst"):
        resolve_input_files(gz_parquet)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_bad_line_in_a_compressed_jsonl_is_named(tmp_path: Path, codec: str) -> None:
    plain = tmp_path / "bad.jsonl"
    plain.write_bytes(b'{"prompt": "fine"}\n{"prompt": oops}\n{"prompt": "later"}\n')
    packed = _compress(plain, codec)
    with pytest.raises(CorpusError, match=r"bad\.jsonl\.(gz|zst)' line 2 is not valid JSON"):
        corpus = open_corpus(packed)
        list(corpus.standardized_batches(None, 10))


def test_truncated_gzip_jsonl(tmp_path: Path) -> None:
    plain = tmp_path / "big.jsonl"
    plain.write_text(
        "".join(json.dumps({"prompt": f"question {i} " * 8}) + "\n" for i in range(3000))
    )
    packed = _compress(plain, "gzip")
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(
        CorpusError, match=r"is not a readable gzip file after line \d+ .*truncated"
    ):
        corpus = open_corpus(packed)
        list(corpus.standardized_batches(None, 1000))


def _shards(tmp_path: Path, frame: pl.DataFrame) -> Path:
    """``frame`` over three Parquet files with row groups of 4, 13 and 2 rows."""
    folder = tmp_path / "shards"
    folder.mkdir()
    frame.slice(0, 21).write_parquet(folder / "part-0.parquet", row_group_size=4)
    frame.slice(21, 30).write_parquet(folder / "part-1.parquet", row_group_size=13)
    frame.slice(51).write_parquet(folder / "part-2.parquet", row_group_size=2)
    return folder


def _many_rows(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "uid": list(range(n)),
            "author": pl.Series([f"u{i % 5}" for i in range(n)], dtype=pl.Categorical),
            "persona": [
                None if i % 4 == 0 else ("" if i % 7 == 0 else f"ctx {i}") for i in range(n)
            ],
            "question": [None if i % 11 == 0 else f"question {i}?" for i in range(n)],
        }
    )


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 16, 64, 10_000])
def test_parquet_pull_reader_matches_the_scan(tmp_path: Path, batch_rows: int) -> None:
    frame = _many_rows(57)
    corpus = open_corpus(_shards(tmp_path, frame))
    for columns in (None, ["row", "dedup_text"], ["row"]):
        expected = corpus.collect(corpus.standardized(columns))
        batches = list(corpus.standardized_batches(columns, batch_rows))
        assert [b.height for b in batches[:-1]] == [batch_rows] * (len(batches) - 1)
        got = pl.concat(batches)
        assert got.schema == expected.schema
        assert got.equals(expected)
    assert expected["row"].to_list() == list(range(57))


def test_parquet_pull_reader_with_messages(tmp_path: Path) -> None:
    messages = [
        [{"role": "system", "content": f"ctx {i}"}, {"role": "user", "content": f"q {i}"}]
        if i % 3
        else [{"role": "user", "content": f"q {i}"}]
        for i in range(40)
    ]
    frame = pl.DataFrame({"id": [f"m{i}" for i in range(40)], "messages": messages})
    folder = tmp_path / "m"
    folder.mkdir()
    frame.slice(0, 25).write_parquet(folder / "a.parquet", row_group_size=6)
    frame.slice(25).write_parquet(folder / "b.parquet", row_group_size=100)
    corpus = open_corpus(folder)
    expected = corpus.collect(corpus.standardized())
    for batch_rows in (5, 9, 1000):
        assert pl.concat(list(corpus.standardized_batches(None, batch_rows))).equals(expected)


def test_parquet_shards_with_other_columns_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    pl.DataFrame({"id": ["1"], "question": ["a"]}).write_parquet(folder / "a.parquet")
    pl.DataFrame({"question": ["b"]}).write_parquet(folder / "b.parquet")
    corpus = open_corpus(folder)
    with pytest.raises(CorpusError, match=r"b\.parquet' has no column 'id'"):
        list(corpus.standardized_batches(None, 10))
    pl.DataFrame({"id": [2], "question": ["b"]}).write_parquet(folder / "b.parquet")
    with pytest.raises(CorpusError, match=r"column 'id' is Int64 in '.*b\.parquet' but String"):
        list(corpus.standardized_batches(None, 10))


def test_corrupt_parquet_shard_while_streaming(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    good = _write(_frame(), folder / "a.parquet")
    corpus = open_corpus(folder)
    (folder / "a.parquet").write_bytes(good.read_bytes()[:40])  # cut after the schema was read
    with pytest.raises(CorpusError, match=r"a\.parquet' is not a readable Parquet file"):
        list(corpus.standardized_batches(None, 10))
