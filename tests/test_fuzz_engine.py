"""Fuzzing every entry point of the engine facade (:mod:`mipo.engine`).

Whatever goes in — arbitrary unicode from every plane, control characters and NUL, megabyte
strings, empty strings, lists and frames, nulls, wrong types, random group and cluster ids — the
engine must answer with a result or a typed :class:`mipo.errors.MipoError` whose message is not
empty. A Rust panic surfaces in Python as ``pyo3_runtime.PanicException`` (a ``BaseException``);
it, and every untyped Python exception, fails these tests.

Results are checked too, not only the absence of errors: dedup clusters point at earlier kept
rows, token counts equal the id lists' lengths and ids are inside the vocabulary, derangements
have no fixed point and respect their constraints.

The default run takes seconds; for a longer campaign::

    MIPO_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_engine.py
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipo import engine
from mipo.errors import (
    InvalidInputError,
    InvalidParameterError,
    MipoError,
    TemplateError,
    TokenizerError,
)

# MIPO_FUZZ_EXAMPLES=2000 for a longer local campaign; the default keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("MIPO_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MESSAGE_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or the MipoError it raised (returned, checked to have a message).

    A Rust panic or any other exception fails the test.
    """
    try:
        return fn(*args, **kwargs)
    except MipoError as exc:
        message = str(exc).strip()
        assert message, f"{type(exc).__name__} raised with an empty message"
        return exc
    except BaseException as exc:
        if type(exc).__name__ == "PanicException":
            pytest.fail(f"the engine panicked in {fn.__qualname__}: {exc!r}")
        raise


def raises_typed(
    error: type[MipoError],
    fn: Callable[..., Any],
    *args: Any,
    match: str | None = None,
    **kwargs: Any,
) -> MipoError:
    """Assert ``fn(*args, **kwargs)`` raises ``error`` (message matching ``match``, never empty).

    A Rust panic (a ``BaseException``) or any other exception propagates and fails the test.
    """
    with pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    assert str(info.value).strip(), f"{type(info.value).__name__} raised with an empty message"
    return info.value


# --- strategies --------------------------------------------------------------------------------

# Pieces that stress normalization, tokenization and templates: NUL and other controls, BOM,
# zero-width and bidi marks, characters that change length under NFKC or case folding, the
# highest code points of every plane boundary, lone combining marks, the template's own special
# tokens and Jinja delimiters (content must be data, never template code).
_NASTY = [
    "\x00",
    "\x01\x02\x7f",
    "\x1b[31m",
    "\r\n",
    "\t\v\f",
    "\u0085",
    "\u00a0",
    "\u2028\u2029",
    "\ufeff",
    "\u200b\u200d",
    "\u202e",
    "\u0301",
    "ﬁ",
    "ß",
    "İ",
    "ǅ",
    "ᾈ",
    "Ⅻ",
    "㍿",
    "\uffff",
    "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0002a6d6",
    "\U000e0001",
    "\U0010ffff",
    "{{ 1 + 1 }}",
    "{% raw %}",
    "{% endfor %}",
    "{#",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    " ",
    "",
]
# Every code point except surrogates (which no UTF-8 string can hold), controls included.
any_char = st.characters(codec="utf-8")
texts = st.one_of(
    st.text(any_char, max_size=60),
    st.lists(st.sampled_from(_NASTY) | st.text(any_char, max_size=5), max_size=12).map("".join),
)
optional_texts = st.none() | texts
seeds = st.integers(min_value=0, max_value=2**64 - 1)


def _big_text(size: int, seed: int) -> str:
    """About ``size`` characters of mixed-plane words (deterministic)."""
    rng = random.Random(seed)
    alphabet = "abcdefghij ÄÖü日本語😀\x00\t\n" + "".join(chr(c) for c in range(0x10000, 0x10010))
    return "".join(rng.choice(alphabet) for _ in range(size))


HUGE = [
    "a" * 1_000_000,
    "word " * 200_000,
    _big_text(1_000_000, 0),
    "\x00" * 100_000,
]


# --- wrong types shared by every column argument -------------------------------------------------

WRONG_COLUMNS = [
    None,
    42,
    3.5,
    "just a string",
    b"bytes",
    object(),
    {"a": 1},
    [1, 2, 3],
    [[1, 2], [3]],
    [b"x"],
    pl.Series([1, 2, 3]),
    pl.Series([1.5, None]),
    pl.Series([True, False]),
    pl.Series([[1], [2]]),
    pl.Series([{"x": 1}]),
    pl.Series([None, None]),
    pl.Series([], dtype=pl.Int64),
    pl.DataFrame({"a": ["x"], "b": ["y"]}),
    pl.DataFrame(),
]


# --- normalize ---------------------------------------------------------------------------------


@FUZZ
@given(st.lists(optional_texts, max_size=20))
def test_normalize_never_crashes(values: list[str | None]) -> None:
    result = outcome(engine.normalize, pl.Series(values, dtype=pl.String))
    if isinstance(result, MipoError):
        return
    assert result.len() == len(values)
    assert result.dtype == pl.String
    # Nulls stay nulls, and nothing else becomes one.
    assert result.is_null().to_list() == [v is None for v in values]


@pytest.mark.parametrize("bad", WRONG_COLUMNS, ids=repr)
def test_normalize_wrong_types_are_typed_errors(bad: Any) -> None:
    raises_typed(InvalidInputError, engine.normalize, bad)


@pytest.mark.parametrize("size", [0, 1])
def test_normalize_empty(size: int) -> None:
    result = outcome(engine.normalize, pl.Series([""] * size, dtype=pl.String))
    assert not isinstance(result, MipoError) and result.to_list() == [""] * size


def test_normalize_huge_strings() -> None:
    result = outcome(engine.normalize, pl.Series(HUGE))
    assert not isinstance(result, MipoError)
    assert result.len() == len(HUGE)
    assert result[0] == "a" * 1_000_000


# --- dedup and Deduper ---------------------------------------------------------------------------

dedup_options = st.fixed_dictionaries(
    {},
    optional={
        "ngram": st.integers(min_value=-2, max_value=12),
        "threshold": st.floats(allow_nan=True, allow_infinity=True),
        "bands": st.integers(min_value=-1, max_value=40),
        "num_perm": st.integers(min_value=-1, max_value=200),
        "seed": st.integers(min_value=-1, max_value=2**64 + 1),
        "near": st.booleans(),
    },
)


def _check_dedup_frame(result: pl.DataFrame, n: int, first_row: int = 0) -> None:
    assert result.columns == ["keep", "cluster", "exact"]
    assert result.height == n
    rows = range(first_row, first_row + n)
    for row, keep, cluster, exact in zip(
        rows, result["keep"], result["cluster"], result["exact"], strict=True
    ):
        assert cluster <= row, "a row's cluster must be an earlier (or its own) row"
        assert keep == (cluster == row)
        assert not (keep and exact), "a kept row cannot be a duplicate"


@FUZZ
@given(st.lists(texts, max_size=25), dedup_options)
def test_dedup_never_crashes(values: list[str], options: dict[str, Any]) -> None:
    # Duplicate some rows so the exact and near paths run, not only the "all distinct" one.
    original = len(values)
    values = values + values[: original // 2]
    result = outcome(engine.dedup, pl.Series(values, dtype=pl.String), **options)
    if isinstance(result, MipoError):
        return
    _check_dedup_frame(result, len(values))
    # Every appended copy is an exact duplicate of an earlier row.
    assert not any(result["keep"].to_list()[original:])


@FUZZ
@given(st.lists(optional_texts, min_size=1, max_size=10).filter(lambda v: None in v))
def test_dedup_nulls_are_typed_errors(values: list[str | None]) -> None:
    first_null = values.index(None)
    raises_typed(
        InvalidInputError,
        engine.dedup,
        pl.Series(values, dtype=pl.String),
        match=rf"null at row {first_null}\b",
    )


@pytest.mark.parametrize("bad", WRONG_COLUMNS, ids=repr)
def test_dedup_wrong_types_are_typed_errors(bad: Any) -> None:
    raises_typed(InvalidInputError, engine.dedup, bad)


@pytest.mark.parametrize(
    "options",
    [
        {"ngram": 0},
        {"num_perm": 7, "bands": 2},
        {"threshold": 0.0},
        {"threshold": float("nan")},
        {"seed": -1},
        {"bogus": 1},
        {"num_perm": 10**9, "bands": 1},
    ],
    ids=repr,
)
def test_dedup_bad_parameters_are_typed_errors(options: dict[str, Any]) -> None:
    assert isinstance(outcome(engine.dedup, pl.Series(["a b c"]), **options), MipoError)


def test_dedup_empty_and_huge() -> None:
    empty = outcome(engine.dedup, pl.Series([], dtype=pl.String))
    assert not isinstance(empty, MipoError)
    _check_dedup_frame(empty, 0)
    huge = outcome(engine.dedup, pl.Series([*HUGE, HUGE[1], ""]))
    assert not isinstance(huge, MipoError)
    _check_dedup_frame(huge, len(HUGE) + 2)
    assert huge["exact"].to_list()[len(HUGE)], "the repeated megabyte string is an exact dup"


@FUZZ
@given(st.lists(st.lists(texts, max_size=8), max_size=5), st.booleans())
def test_deduper_chunks_never_crash(chunks: list[list[str]], near: bool) -> None:
    deduper = engine.Deduper(near=near)
    seen = 0
    for chunk in chunks:
        result = outcome(deduper.add, pl.Series(chunk, dtype=pl.String))
        if isinstance(result, MipoError):
            continue
        _check_dedup_frame(result, len(chunk), first_row=seen)
        seen += len(chunk)
    assert deduper.rows_seen == seen
    # Streaming equals one shot (when every chunk was accepted).
    flat = [t for chunk in chunks for t in chunk]
    whole = engine.dedup(pl.Series(flat, dtype=pl.String), near=near)
    assert deduper.clusters == int(whole["keep"].sum())


@pytest.mark.parametrize("bad", WRONG_COLUMNS, ids=repr)
def test_deduper_wrong_types_are_typed_errors(bad: Any) -> None:
    deduper = engine.Deduper()
    raises_typed(InvalidInputError, deduper.add, bad)
    # A rejected chunk leaves the state untouched and usable.
    assert deduper.rows_seen == 0
    result = outcome(deduper.add, pl.Series(["x y", "x y"]))
    assert not isinstance(result, MipoError)
    assert result["exact"].to_list() == [False, True]


# --- chat tokenizer ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> engine.ChatTokenizer:
    return engine.ChatTokenizer.from_pretrained(tiny_model_dir)


roles = st.sampled_from(["system", "user", "assistant", "tool", ""]) | texts
messages = st.fixed_dictionaries({"role": st.none() | roles, "content": optional_texts})
conversation = st.none() | st.lists(st.none() | messages, max_size=5)


def _check_encoded(result: pl.DataFrame, n: int, vocab_size: int) -> None:
    assert result.columns == ["input_ids", "num_tokens"]
    assert result.height == n
    lengths = result["input_ids"].list.len().fill_null(0)
    assert lengths.cast(pl.UInt32).to_list() == result["num_tokens"].fill_null(0).to_list()
    ids = result["input_ids"].explode().drop_nulls()
    if ids.len():
        assert int(ids.max()) < vocab_size  # type: ignore[arg-type]


@FUZZ
@given(st.lists(conversation, max_size=6), st.booleans())
def test_render_and_encode_chat_never_crash(
    tokenizer: engine.ChatTokenizer, rows: list[Any], add_generation_prompt: bool
) -> None:
    column = pl.Series("messages", rows, dtype=MESSAGE_DTYPE)
    rendered = outcome(tokenizer.render, column, add_generation_prompt=add_generation_prompt)
    encoded = outcome(tokenizer.encode_chat, column, add_generation_prompt=add_generation_prompt)
    # Rendering and encoding accept and reject the same inputs.
    assert isinstance(rendered, MipoError) == isinstance(encoded, MipoError)
    if isinstance(rendered, MipoError):
        return
    assert rendered.len() == len(rows)
    _check_encoded(encoded, len(rows), tokenizer.vocab_size)
    # Content is data, never template code: each message's text appears verbatim.
    for row, text in zip(rows, rendered, strict=True):
        for message in row or []:
            if message and message["content"]:
                assert message["content"] in text


@FUZZ
@given(st.lists(optional_texts, max_size=10), st.booleans())
def test_encode_never_crashes(
    tokenizer: engine.ChatTokenizer, values: list[str | None], add_special_tokens: bool
) -> None:
    result = outcome(
        tokenizer.encode, pl.Series(values, dtype=pl.String), add_special_tokens=add_special_tokens
    )
    if not isinstance(result, MipoError):
        _check_encoded(result, len(values), tokenizer.vocab_size)


WRONG_MESSAGES = [
    *WRONG_COLUMNS,
    pl.Series(["hello"]),
    pl.Series([["hello"]]),
    pl.Series([[{"role": "user"}]]),
    pl.Series([[{"content": "hi"}]]),
    pl.Series([[{"role": "user", "content": 7}]]),
    pl.Series([[{"role": 1, "content": "hi"}]]),
    pl.Series([[{"role": "user", "content": ["a", "b"]}]]),
    pl.Series([[{"role": "user", "content": {"text": "hi"}}]]),
    pl.Series([[{"ROLE": "user", "CONTENT": "hi"}]]),
    pl.Series([[{"role": "user", "content": "hi", "extra": None}]]),
    pl.Series([[]], dtype=MESSAGE_DTYPE),
    pl.Series([None], dtype=MESSAGE_DTYPE),
    pl.Series([[None]], dtype=MESSAGE_DTYPE),
]


@pytest.mark.parametrize("bad", WRONG_MESSAGES, ids=repr)
def test_chat_wrong_types_are_typed_errors(tokenizer: engine.ChatTokenizer, bad: Any) -> None:
    raises_typed(InvalidInputError, tokenizer.render, bad)
    raises_typed(InvalidInputError, tokenizer.encode_chat, bad)


def test_chat_empty_column_gives_empty_results(tokenizer: engine.ChatTokenizer) -> None:
    empty = pl.Series([], dtype=MESSAGE_DTYPE)
    rendered = outcome(tokenizer.render, empty)
    assert not isinstance(rendered, MipoError)
    assert rendered.dtype == pl.String and rendered.len() == 0
    encoded = outcome(tokenizer.encode_chat, empty)
    assert not isinstance(encoded, MipoError)
    _check_encoded(encoded, 0, tokenizer.vocab_size)


@pytest.mark.parametrize("bad", WRONG_COLUMNS, ids=repr)
def test_encode_wrong_types_are_typed_errors(tokenizer: engine.ChatTokenizer, bad: Any) -> None:
    raises_typed(InvalidInputError, tokenizer.encode, bad)


def test_tokenizer_huge_strings(tokenizer: engine.ChatTokenizer) -> None:
    plain = outcome(tokenizer.encode, pl.Series(HUGE))
    assert not isinstance(plain, MipoError)
    _check_encoded(plain, len(HUGE), tokenizer.vocab_size)
    chats = pl.Series(
        [[{"role": "user", "content": text}] for text in HUGE[:2]], dtype=MESSAGE_DTYPE
    )
    encoded = outcome(tokenizer.encode_chat, chats)
    assert not isinstance(encoded, MipoError)
    _check_encoded(encoded, 2, tokenizer.vocab_size)
    assert int(encoded["num_tokens"].min()) > 1_000  # type: ignore[arg-type]


@FUZZ
@given(
    template=st.one_of(
        texts,
        st.sampled_from(
            [
                "{% for m in messages %}{{ m.content }}{% endfor %}",
                "{{ raise_exception('no system messages allowed') }}",
                "{% for m in messages %}{{ m['role'] + m['content'] }}{% endfor %}",
                "{{ messages[99].content }}",
                "{{ messages | tojson }}",
                "{% if %}",
                "{{ undefined_function() }}",
                "{% for m in messages %}{{ m.content | length / 0 }}{% endfor %}",
                "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}",
                "{{ strftime_now('%Y-%m-%d') }}",
            ]
        ),
    )
)
def test_arbitrary_chat_templates_never_crash(tiny_model_dir: Path, template: str) -> None:
    loaded = outcome(engine.ChatTokenizer.from_pretrained, tiny_model_dir, chat_template=template)
    if isinstance(loaded, MipoError):
        return
    column = pl.Series(
        [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "\x00"}]],
        dtype=MESSAGE_DTYPE,
    )
    rendered = outcome(loaded.render, column)
    encoded = outcome(loaded.encode_chat, column)
    assert isinstance(rendered, MipoError) == isinstance(encoded, MipoError)


def test_bad_model_folders_are_typed_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert isinstance(outcome(engine.ChatTokenizer.from_pretrained, tmp_path / "nope"), MipoError)
    assert isinstance(outcome(engine.ChatTokenizer.from_pretrained, tmp_path), MipoError)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name, content in [
        ("tokenizer.json", b"{not json"),
        ("tokenizer_config.json", b'{"chat_template": 12}'),
    ]:
        (broken / name).write_bytes(content)
    assert isinstance(outcome(engine.ChatTokenizer.from_pretrained, broken), MipoError)

    # A valid tokenizer.json beside a tokenizer_config.json that is odd.
    def folder_with_config(config: bytes) -> Path:
        folder = tmp_path / f"cfg-{len(config)}"
        folder.mkdir()
        (folder / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
        (folder / "tokenizer_config.json").write_bytes(config)
        return folder

    # Not UTF-8: the config cannot be read.
    garbage = folder_with_config(b"\xff\xfe\x00garbage")
    raises_typed(TokenizerError, engine.ChatTokenizer.from_pretrained, garbage, match="UTF-8")
    # A list of templates with none named "default": which one to use is ambiguous.
    templates = folder_with_config(b'{"chat_template": ["x"]}')
    raises_typed(TemplateError, engine.ChatTokenizer.from_pretrained, templates, match="default")
    # JSON that is not an object holds no chat template: the tokenizer loads for encode, and
    # render raises TemplateError, as for any folder without a template.
    no_template = outcome(engine.ChatTokenizer.from_pretrained, folder_with_config(b"[]"))
    assert not isinstance(no_template, MipoError)
    assert no_template.chat_template is None
    chat = pl.Series([[{"role": "user", "content": "hi"}]], dtype=MESSAGE_DTYPE)
    raises_typed(TemplateError, no_template.render, chat)
    raises_typed(TemplateError, no_template.encode_chat, chat)
    encoded = outcome(no_template.encode, pl.Series(["hi"]))
    assert not isinstance(encoded, MipoError)
    _check_encoded(encoded, 1, no_template.vocab_size)


# --- derangements ------------------------------------------------------------------------------


def _check_derangement(sigma: pl.Series, n: int) -> list[int]:
    values = sigma.to_list()
    assert sorted(values) == list(range(n))
    assert all(s != i for i, s in enumerate(values))
    return values


@FUZZ
@given(st.integers(min_value=-3, max_value=3_000), seeds)
def test_derangement_never_crashes(n: int, seed: int) -> None:
    result = outcome(engine.derangement, n, seed=seed)
    if n < 2:
        assert isinstance(result, MipoError)
    else:
        assert not isinstance(result, MipoError)
        _check_derangement(result, n)


@pytest.mark.parametrize(
    ("n", "seed"),
    [(-(2**70), 0), (2**63, 0), (2**64, 0), (5, 2**64), (5, -1), (5, 2**100)],
)
def test_derangement_out_of_range_scalars_are_typed_errors(n: int, seed: int) -> None:
    assert isinstance(outcome(engine.derangement, n, seed=seed), MipoError)


@pytest.mark.parametrize("bad", [None, "5", 5.5, [5], object()], ids=repr)
def test_derangement_wrong_scalar_types_are_typed_errors(bad: Any) -> None:
    # Only integers are accepted: not even a string or float Python could read as one.
    raises_typed(InvalidParameterError, engine.derangement, bad, seed=0, match="^n must be")
    raises_typed(InvalidParameterError, engine.derangement, 5, seed=bad, match="^seed must be")


ids = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=0, max_value=3),
    texts,
)


@FUZZ
@given(
    data=st.data(),
    n=st.integers(min_value=-1, max_value=60),
    use_groups=st.booleans(),
    use_clusters=st.booleans(),
    seed=seeds,
    sweeps=st.integers(min_value=0, max_value=12) | st.sampled_from([10_001, 2**40]),
)
def test_constrained_derangement_never_crashes(
    data: st.DataObject, n: int, use_groups: bool, use_clusters: bool, seed: int, sweeps: int
) -> None:
    size = st.integers(min_value=max(n, 0), max_value=max(n, 0)) | st.integers(0, 62)
    kind = data.draw(st.sampled_from([ids, st.integers(0, 3), st.none() | st.integers(0, 3)]))
    column = size.flatmap(lambda k: st.lists(kind, min_size=k, max_size=k))
    groups = data.draw(column, label="groups") if use_groups else None
    clusters = data.draw(column, label="clusters") if use_clusters else None
    series = {
        name: (_as_id_series(values) if values is not None else None)
        for name, values in (("groups", groups), ("clusters", clusters))
    }
    result = outcome(
        engine.constrained_derangement,
        n,
        groups=series["groups"],
        clusters=series["clusters"],
        seed=seed,
        sweeps=sweeps,
    )
    if isinstance(result, MipoError):
        return
    sigma = _check_derangement(result, n)
    for values in (groups, clusters):
        if values is not None:
            assert all(values[s] != values[i] for i, s in enumerate(sigma))


def _as_id_series(values: list[Any]) -> pl.Series | list[Any]:
    """Ids as a Series when Polars can type them; mixed lists go in as plain lists."""
    try:
        return pl.Series(values, strict=True)
    except (TypeError, pl.exceptions.PolarsError):
        return values


# Ids may be of any type, so a column of lists, bytes or structs is valid: the wrong inputs are
# non-columns, frames of several columns, mixed values, nulls and a length other than n (= 3).
WRONG_IDS = [
    (42, "must be a Polars Series"),
    (3.5, "must be a Polars Series"),
    ("just a string", "must be a Polars Series"),
    (b"bytes", "must be a Polars Series"),
    (object(), "must be a Polars Series"),
    ({"a": 1}, "must be a Polars Series"),
    (pl.DataFrame({"a": ["x"], "b": ["y"]}), "single column"),
    (pl.DataFrame(), "single column"),
    (["a", 1, "b"], "cannot be read as one column"),
    ([None, 1, 2], "null"),
    (pl.Series([None, "a", "b"]), "null"),
    (pl.Series([1.5, None, 2.5]), "null"),
    (pl.Series([None, None, None]), "null"),
    (pl.Series([1, 2]), "rows but n is 3"),
    (pl.Series([], dtype=pl.Int64), "rows but n is 3"),
]


@pytest.mark.parametrize(("bad", "reason"), WRONG_IDS, ids=repr)
def test_constrained_derangement_wrong_types_are_typed_errors(bad: Any, reason: str) -> None:
    call = engine.constrained_derangement
    raises_typed(InvalidInputError, call, 3, groups=bad, seed=0, match=f"^groups .*{reason}")
    raises_typed(InvalidInputError, call, 3, clusters=bad, seed=0, match=f"^clusters .*{reason}")


@pytest.mark.parametrize("ids", [None, [1, 2, 3], pl.Series([1, 2, 3])], ids=repr)
def test_constrained_derangement_accepts_no_or_any_typed_ids(ids: Any) -> None:
    # Either constraint is optional, and ids may be any type: three distinct ids (or none)
    # constrain nothing beyond sigma[i] != i.
    for kwargs in ({"groups": ids}, {"clusters": ids}):
        result = outcome(engine.constrained_derangement, 3, seed=0, **kwargs)
        assert not isinstance(result, MipoError), kwargs
        _check_derangement(result, 3)


@pytest.mark.parametrize("bad", [None, "5", 5.5, [3], -1, 2**64, 2**70], ids=repr)
def test_constrained_derangement_bad_scalars_are_typed_errors(bad: Any) -> None:
    groups = pl.Series(["a", "b", "c"])
    call = engine.constrained_derangement
    for name, kwargs in (
        ("n", {"n": bad, "seed": 0}),
        ("seed", {"n": 3, "seed": bad}),
        ("sweeps", {"n": 3, "seed": 0, "sweeps": bad}),
    ):
        raises_typed(InvalidParameterError, call, groups=groups, match=f"^{name} must be", **kwargs)
