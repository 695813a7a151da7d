"""Read, validate and map an input corpus to chat messages (Polars, lazy).

A corpus is a Parquet, JSONL or CSV file (JSONL and CSV also gzip- or zstd-compressed:
``.jsonl.gz``, ``.jsonl.zst``, ``.csv.gz``...), a folder of them, or a glob of shards. Its
columns are detected from common names (or named explicitly) and mapped, with Polars expressions
only (no per-row Python), onto one standard shape:

- ``row`` (UInt64): the row's position in the input, counted across files;
- ``id`` (String): the id column, or the row number when there is none;
- ``user_id`` (String, only with a user column);
- ``prompt``: the chat messages ``List(Struct{role, content})``: the context and the question
  put together as the :class:`~mipo.prompt_format.PromptFormat` says (``--context-format``; by
  default the context opens the user's turn), or the messages column as given;
- ``prompt_nocontext``: the question alone (a messages column without its system messages);
- ``has_context`` (Boolean): whether there was a context to drop;
- ``dedup_text`` (String): context and question joined, the text deduplication compares;
- ``question_text`` / ``context_text`` (String): the text of the messages without the context /
  the context itself (a messages column: its system messages), "" when there is none
  (``context-swap`` negatives);
- ``is_empty`` (Boolean): no usable prompt (null or blank); such rows are dropped and counted.

>>> from mipo.corpus import open_corpus
>>> from mipo.synth import SAMPLE_CORPUS_PATH
>>> corpus = open_corpus(SAMPLE_CORPUS_PATH)
>>> corpus.columns.prompt, corpus.columns.context, corpus.columns.user
('question', 'context', 'user_id')
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mipo.errors import ConfigError, CorpusError
from mipo.prompt_format import DEFAULT_CONTEXT_FORMAT, PromptFormat

__all__ = [
    "CONTEXT_NAMES",
    "ID_NAMES",
    "MESSAGES_NAMES",
    "MESSAGE_DTYPE",
    "PROMPT_NAMES",
    "USER_NAMES",
    "ColumnMap",
    "ColumnOptions",
    "Corpus",
    "input_file_stamps",
    "open_corpus",
    "resolve_input_files",
]

PROMPT_NAMES = ("prompt", "question", "instruction", "query", "text")
MESSAGES_NAMES = ("messages", "conversation", "chat")
CONTEXT_NAMES = ("context", "persona", "profile", "system", "user_context")
USER_NAMES = ("user_id", "user", "author")
ID_NAMES = ("id", "prompt_id", "uid")

MESSAGE_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
"""A conversation as TRL takes it: a list of ``{role, content}`` messages."""

_FORMATS = {".parquet": "parquet", ".jsonl": "ndjson", ".ndjson": "ndjson", ".csv": "csv"}
# Compressed text inputs (``corpus.jsonl.gz``): Polars decompresses them as a stream while it scans.
_COMPRESSIONS = (".gz", ".zst", ".zstd")
_COMPRESSIBLE = ("ndjson", "csv")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
_TEXT_CASTABLE = (pl.Categorical, pl.Enum, pl.Null)


# --- columns -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnOptions:
    """Column names (``--set columns.prompt=NAME``, ...); ``None``: detect from common names."""

    prompt: str | None = None
    """Plain-text question column."""
    messages: str | None = None
    """Chat messages column, ``[{role, content}, ...]``."""
    context: str | None = None
    """The user's context; ``context_format`` says where it goes."""
    user: str | None = None
    """User id, used to keep negatives from the same user."""
    id: str | None = None
    """Row id carried into the plan and the pairs."""
    context_format: str = DEFAULT_CONTEXT_FORMAT
    """How the context enters the prompt (``--context-format``): ``user-turn``, ``about-user``,
    ``raw-system``, ``paper`` or a template holding ``{context}`` (:mod:`mipo.prompt_format`)."""

    def __post_init__(self) -> None:
        PromptFormat(self.context_format)  # a bad format fails here, naming the choices
        if self.prompt is not None and self.messages is not None:
            raise ConfigError(
                f"columns.prompt ({self.prompt!r}) and columns.messages ({self.messages!r}) both "
                "given: pass only one of them"
            )
        for role in ("prompt", "messages", "context", "user", "id"):
            value = getattr(self, role)
            if value is not None and not value.strip():
                raise ConfigError(f"columns.{role} must name a column, got an empty string")


@dataclass(frozen=True)
class ColumnMap:
    """The input columns each role was mapped to (exactly one of prompt / messages is set)."""

    prompt: str | None
    messages: str | None
    context: str | None
    user: str | None
    id: str | None

    def as_dict(self) -> dict[str, str | None]:
        """Role -> column name, for ``run.json`` and messages."""
        return {
            "prompt": self.prompt,
            "messages": self.messages,
            "context": self.context,
            "user": self.user,
            "id": self.id,
        }


def _columns_hint(names: list[str]) -> str:
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    return f"the input has columns: {shown or '(none)'}"


def _find(names: list[str], candidates: tuple[str, ...], taken: set[str]) -> str | None:
    """First candidate present in ``names`` (exact, then case-insensitive), not already used."""
    for candidate in candidates:
        if candidate in names and candidate not in taken:
            return candidate
    lowered = {n.lower(): n for n in names if n not in taken}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return None


def detect_columns(names: list[str], options: ColumnOptions) -> ColumnMap:
    """Map roles to input columns: explicit options win, then common names.

    >>> detect_columns(["uid", "question", "persona"], ColumnOptions())
    ColumnMap(prompt='question', messages=None, context='persona', user=None, id='uid')
    """
    for role in ("prompt", "messages", "context", "user", "id"):
        name = getattr(options, role)
        if name is not None and name not in names:
            raise CorpusError(f"column {name!r} (columns.{role}) not found; {_columns_hint(names)}")
    explicit = {r: getattr(options, r) for r in ("prompt", "messages", "context", "user", "id")}
    taken = {n for n in explicit.values() if n is not None}

    prompt, messages = explicit["prompt"], explicit["messages"]
    if prompt is None and messages is None:
        # A plain prompt column wins over a messages column: datasets with both (UltraFeedback)
        # keep the whole conversation, answer included, in ``messages``.
        prompt = _find(names, PROMPT_NAMES, taken)
        if prompt is None:
            messages = _find(names, MESSAGES_NAMES, taken)
        if prompt is None and messages is None:
            raise CorpusError(
                f"no prompt column found (looked for {', '.join(PROMPT_NAMES)} or a messages "
                f"column {', '.join(MESSAGES_NAMES)}); {_columns_hint(names)}; "
                "pass --set columns.prompt=NAME or --set columns.messages=NAME"
            )
        taken.add(prompt or messages)  # type: ignore[arg-type]

    def pick(role: str, candidates: tuple[str, ...]) -> str | None:
        if explicit[role] is not None:
            return explicit[role]
        found = _find(names, candidates, taken)
        if found is not None:
            taken.add(found)
        return found

    return ColumnMap(
        prompt=prompt,
        messages=messages,
        context=pick("context", CONTEXT_NAMES),
        user=pick("user", USER_NAMES),
        id=pick("id", ID_NAMES),
    )


# --- input files -------------------------------------------------------------------------------


def _format_of(path: Path) -> str | None:
    """The format a file name says: ``parquet``, ``ndjson`` or ``csv``; None if unsupported.

    >>> [_format_of(Path(n)) for n in ("a.jsonl.gz", "b.CSV.zst", "c.parquet.gz")]
    ['ndjson', 'csv', None]
    """
    suffix = path.suffix.lower()
    if suffix in _COMPRESSIONS:
        inner = _FORMATS.get(Path(path.stem).suffix.lower())
        return inner if inner in _COMPRESSIBLE else None
    return _FORMATS.get(suffix)


def _supported() -> str:
    return ", ".join(sorted(_FORMATS)) + " (JSONL and CSV also as .gz or .zst)"


def resolve_input_files(spec: str | os.PathLike[str]) -> tuple[list[Path], str]:
    """The files an INPUT names (a file, a folder, or a glob) and their one format.

    Returns ``(files, format)`` with format ``parquet``, ``ndjson`` or ``csv``, told by the suffix
    (``.jsonl.gz`` and ``.jsonl.zst`` are ``ndjson``; compressed and plain files may share an
    input). Folders are read recursively; hidden files and markers such as ``_SUCCESS`` are
    skipped.
    """
    text = str(spec)
    path = Path(text).expanduser()
    supported = _supported()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        files = [p for p in files if _format_of(p) is not None]
        if not files:
            raise CorpusError(f"folder '{text}' holds no {supported} files")
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        files = [p for p in files if p.is_file()]
        if not files:
            raise CorpusError(f"no files match '{text}'")
    else:
        raise CorpusError(f"input '{text}' not found: pass a {supported} file, a folder or a glob")

    formats = {_format_of(p) for p in files}
    if None in formats:
        bad = next(p for p in files if _format_of(p) is None)
        raise CorpusError(f"input file '{bad}' has an unsupported type; supported: {supported}")
    if len(formats) > 1:
        raise CorpusError(
            f"input '{text}' mixes file types ({', '.join(sorted(f for f in formats if f))}): "
            "put one format per folder or glob"
        )
    for p in files:
        if p.stat().st_size == 0:
            raise CorpusError(f"input file '{p}' is empty")
    return files, formats.pop()  # type: ignore[return-value]


def input_file_stamps(files: list[Path]) -> list[dict[str, Any]]:
    """Name, size and modification time (ns) of each input file: what a rerun compares to tell
    whether the input changed. An in-place edit changes the mtime even when the size stays; the
    contents are not hashed (that would read a large corpus on every rerun).

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "a.jsonl").write_text("{}")
    2
    >>> sorted(input_file_stamps([d / "a.jsonl"])[0])
    ['mtime_ns', 'name', 'size']
    """
    stamps = []
    for path in files:
        info = path.stat()
        stamps.append({"name": path.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns})
    return stamps


def _scan(files: list[Path], fmt: str) -> pl.LazyFrame:
    sources = [str(p) for p in files]
    if fmt == "parquet":
        return pl.scan_parquet(sources)
    if fmt == "ndjson":
        return pl.scan_ndjson(sources, infer_schema_length=10_000)
    # CSV: every column as text; numbers-as-ids and prompts that look numeric stay intact.
    return pl.scan_csv(sources, infer_schema=False)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _compression(path: Path) -> str | None:
    """``gzip`` or ``zstd`` when the file starts with that codec's magic bytes (as Polars tells)."""
    with path.open("rb") as handle:
        head = handle.read(4)
    return next((codec for magic, codec in _MAGIC.items() if head.startswith(magic)), None)


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[io.BufferedIOBase]:
    """The file's bytes, decompressed on the fly when it is gzip or zstd (nothing on disk)."""
    codec = _compression(path)
    if codec is None:
        with path.open("rb") as handle:
            yield handle
        return
    import pyarrow as pa

    stream = pa.input_stream(str(path), compression=codec)
    with io.BufferedReader(stream) as handle:
        yield handle


def _diagnose_jsonl(path: Path) -> str | None:
    """Find the first bad line of a JSONL file (run only after Polars failed, to name it)."""
    codec = _compression(path)
    seen = 0
    number = 0
    try:
        with _open_lines(path) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return (
                        f"'{path}' line {number}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                        f"column {exc.start + 1}); re-encode the file as UTF-8"
                    )
                if not line.strip():
                    continue
                seen += 1
                try:
                    value = json.loads(line)
                except ValueError as exc:
                    if not raw.endswith(b"\n"):  # only the last line can lack its newline
                        return (
                            f"'{path}' line {number} (the last) is cut off: not valid JSON "
                            f"({exc}); the file looks truncated: complete or remove that line"
                        )
                    return f"'{path}' line {number} is not valid JSON ({exc}); fix or remove it"
                if not isinstance(value, dict):
                    return (
                        f"'{path}' line {number} is a JSON {type(value).__name__}, not an "
                        "object; each line must be one JSON object"
                    )
    except (OSError, EOFError) as exc:
        if codec is None:
            raise
        return (
            f"'{path}' is not a readable {codec} file after line {number} ({_first_line(exc)}); "
            "it may be truncated or corrupt: compress it again"
        )
    if seen == 0:
        return f"input file '{path}' holds no JSON lines"
    return None


def _diagnose_stream(path: Path) -> str | None:
    """A compressed file that does not decompress to its end (truncated, corrupt), else None."""
    codec = _compression(path)
    if codec is None:
        return None
    try:
        with _open_lines(path) as handle:
            while handle.read(1 << 20):
                pass
    except (OSError, EOFError) as exc:
        return (
            f"'{path}' is not a readable {codec} file ({_first_line(exc)}); it may be truncated "
            "or corrupt: compress it again"
        )
    return None


def corpus_error(files: list[Path], fmt: str, error: BaseException) -> CorpusError:
    """A one-line, actionable error for a failed read, naming the file (and line) at fault."""
    if fmt == "ndjson":
        for path in files:
            found = _diagnose_jsonl(path)
            if found:
                return CorpusError(found)
    if fmt == "csv":
        for path in files:
            found = _diagnose_stream(path)
            if found:
                return CorpusError(found)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for path in files:
            try:
                pq.read_metadata(path)
            except Exception as exc:
                return CorpusError(
                    f"'{path}' is not a readable Parquet file ({_first_line(exc)}); "
                    "it may be truncated or corrupt: re-export it"
                )
    where = str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
    return CorpusError(f"cannot read {where}: {_first_line(error)}")


# --- the corpus --------------------------------------------------------------------------------


def _text_column(name: str, dtype: pl.DataType, role: str) -> pl.Expr:
    """A column as text; numbers and booleans are cast, nested values refused."""
    if dtype == pl.String:
        return pl.col(name)
    if isinstance(dtype, _TEXT_CASTABLE) or dtype.is_numeric() or dtype == pl.Boolean:
        return pl.col(name).cast(pl.String)
    raise CorpusError(
        f"column {name!r} ({role}) holds {dtype} values, not text; "
        f"pass --set columns.{role}=NAME with a text column"
    )


def _blank(expr: pl.Expr) -> pl.Expr:
    return expr.is_null() | (expr.str.strip_chars() == "")


def check_parquet_columns(
    path: Path, first: Path, found: pl.Schema, reference: pl.Schema, needed: list[str]
) -> None:
    """Refuse a Parquet shard that lacks a mapped column or holds it with another type."""
    for name in needed:
        if name not in found:
            raise CorpusError(
                f"'{path}' has no column {name!r} ('{first}' has it); "
                f"{_columns_hint(list(found.names()))}: give every file the same columns"
            )
        if found[name] != reference[name]:
            raise CorpusError(
                f"column {name!r} is {found[name]} in '{path}' but {reference[name]} in "
                f"'{first}': give every file the same column types"
            )


@dataclass
class Corpus:
    """An opened corpus: its files, format, schema and column mapping. Nothing is read yet."""

    spec: str
    files: list[Path]
    format: str
    schema: pl.Schema
    columns: ColumnMap
    _lazy: pl.LazyFrame
    prompt_format: PromptFormat = field(default_factory=PromptFormat)

    @property
    def has_context_column(self) -> bool:
        return self.columns.context is not None

    @property
    def has_users(self) -> bool:
        return self.columns.user is not None

    def _messages_expr(
        self,
    ) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
        """(prompt, prompt_nocontext, has_context, context_text, dedup_text, is_empty,
        bad_message); the prompt puts the context where :attr:`prompt_format` says."""
        cols = self.columns
        ctx: pl.Expr | None = None
        if cols.context is not None:
            ctx = _text_column(cols.context, self.schema[cols.context], "context")
        if cols.prompt is not None:
            return self._prompt_column_exprs(cols.prompt, ctx)
        assert cols.messages is not None
        return self._messages_column_exprs(cols.messages, ctx)

    def _prompt_column_exprs(
        self, column: str, ctx: pl.Expr | None
    ) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
        """:meth:`_messages_expr` for a plain-text prompt column (and an optional context
        column): the question becomes one user message."""
        dtype = self.schema[column]
        if dtype != pl.String and not isinstance(dtype, _TEXT_CASTABLE):
            raise CorpusError(
                f"prompt column {column!r} holds {dtype} values, not text; "
                "pass --set columns.prompt=NAME with a text column (or columns.messages for chat "
                "messages)"
            )
        question = pl.col(column).cast(pl.String)
        user_msg = pl.struct(pl.lit("user").alias("role"), question.alias("content"))
        nocontext = pl.concat_list([user_msg])
        nocontext = nocontext.cast(MESSAGE_DTYPE)
        if ctx is None:
            has_context = pl.lit(False)
            prompt = nocontext
            context_text = pl.lit("")
            dedup_text = question
        else:
            has_context = ~_blank(ctx)
            prompt = self.prompt_format.messages_expr(ctx, nocontext, MESSAGE_DTYPE)
            context_text = pl.when(has_context).then(ctx).otherwise(pl.lit(""))
            dedup_text = pl.concat_str([ctx.fill_null(""), question], separator="\n")
        return (
            prompt.cast(MESSAGE_DTYPE),
            nocontext,
            has_context.fill_null(False),
            context_text.fill_null(""),
            dedup_text,
            _blank(question),
            pl.lit(False),
        )

    def _messages_column_exprs(
        self, name: str, ctx: pl.Expr | None
    ) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
        """:meth:`_messages_expr` for a chat-messages column: its system messages (and an
        optional context column, as a leading system message) are the context."""
        element = pl.element().struct
        messages = self._decoded_messages(name)
        if ctx is not None:
            system_msg = pl.struct(pl.lit("system").alias("role"), ctx.alias("content"))
            messages = (
                pl.when(~_blank(ctx) & messages.is_not_null())
                .then(pl.concat_list([system_msg.cast(MESSAGE_DTYPE.inner), messages]))  # type: ignore[attr-defined]
                .otherwise(messages)
            )
        messages = messages.cast(MESSAGE_DTYPE)
        is_system = pl.element().struct.field("role") == "system"
        nocontext = messages.list.filter(~is_system)
        has_context = messages.list.eval(is_system).list.any().fill_null(False)
        bad = (
            messages.list.eval(element.field("role").is_null() | element.field("content").is_null())
            .list.any()
            .fill_null(False)
        )
        usable = nocontext.list.eval(element.field("content").str.strip_chars() != "").list.any()
        dedup_text = messages.list.eval(element.field("content")).list.join("\n")
        context_text = (
            messages.list.eval(element.field("content").filter(element.field("role") == "system"))
            .list.join("\n")
            .fill_null("")
        )
        if self.prompt_format.spec != "raw-system":
            # The system messages are the context: put it where the format says.
            messages = self.prompt_format.messages_expr(context_text, nocontext, MESSAGE_DTYPE)
        return (
            messages,
            nocontext,
            has_context,
            context_text,
            dedup_text,
            ~usable.fill_null(False),
            bad,
        )

    def _decoded_messages(self, name: str) -> pl.Expr:
        """The messages column as a list of ``{role, content}`` text structs (JSON text
        decoded); a column of another shape is a :class:`CorpusError`."""
        dtype = self.schema[name]
        raw = pl.col(name)
        if dtype == pl.String:  # CSV, or JSON text in a Parquet column
            raw = raw.str.json_decode(MESSAGE_DTYPE)
        elif not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)):
            raise CorpusError(
                f"messages column {name!r} holds {dtype} values; expected a list of "
                "{role, content} objects (or pass --set columns.prompt=NAME for plain text)"
            )
        else:
            fields = {f.name for f in dtype.inner.fields}  # type: ignore[union-attr]
            missing = [f for f in ("role", "content") if f not in fields]
            if missing:
                raise CorpusError(
                    f"messages in column {name!r} have no {' or '.join(missing)} field "
                    f"(fields: {', '.join(sorted(fields)) or 'none'}); each message needs a "
                    "role and a content"
                )
        element = pl.element().struct
        return raw.list.eval(
            pl.struct(
                element.field("role").cast(pl.String).alias("role"),
                element.field("content").cast(pl.String).alias("content"),
            )
        )

    def rows(self) -> pl.LazyFrame:
        """Every row with the file's own columns, as read (CSV cells as text), lazily: for
        copies of a corpus that must stay a corpus (``mipo run``'s split files, which
        build-pairs and eval map again). Collect it with :meth:`collect`."""
        return self._lazy

    def standardized(self, columns: list[str] | None = None) -> pl.LazyFrame:
        """The corpus in the standard shape (see the module docstring), lazily.

        ``columns`` selects a subset, so a pass that only needs ``dedup_text`` never builds
        the messages.
        """
        return self._lazy.with_row_index("__row").select(self._standard_exprs(columns))

    def _standard_exprs(self, columns: list[str] | None = None) -> list[pl.Expr]:
        """The expressions of :meth:`standardized`, over the input columns and ``__row``."""
        cols = self.columns
        prompt, nocontext, has_context, context_text, dedup_text, is_empty, bad = (
            self._messages_expr()
        )
        row = pl.col("__row").cast(pl.UInt64)
        if cols.id is not None:
            ident = _text_column(cols.id, self.schema[cols.id], "id")
        else:
            ident = row.cast(pl.String)
        content = pl.element().struct.field("content")
        exprs: dict[str, pl.Expr] = {
            "row": row,
            "id": ident,
            "prompt": prompt,
            "prompt_nocontext": nocontext,
            "has_context": has_context,
            "dedup_text": dedup_text,
            "question_text": nocontext.list.eval(content).list.join("\n").fill_null(""),
            "context_text": context_text,
            "is_empty": is_empty,
            "bad_message": bad,
        }
        if cols.user is not None:
            exprs["user_id"] = _text_column(cols.user, self.schema[cols.user], "user")
        wanted = columns or list(exprs)
        unknown = [c for c in wanted if c not in exprs]
        if unknown:
            raise ValueError(f"unknown standard columns {unknown}; known: {list(exprs)}")
        return [exprs[c].alias(c) for c in wanted]

    def standardized_batches(
        self, columns: list[str] | None, batch_rows: int
    ) -> Iterator[pl.DataFrame]:
        """:meth:`standardized` streamed in order, in batches of ``batch_rows`` rows (the last
        may be shorter); read errors become :class:`CorpusError` naming the file and line.

        Parquet is pulled file by file, one slice of ``batch_rows`` rows at a time and only the
        columns the standard ones are built from (a slice reads just the row groups and pages it
        covers), so at most about two batches of input are in memory; a streaming collect of the
        whole scan reads ahead, and that set the plan stage's peak memory. The batches are the
        same rows, values and dtypes as :meth:`standardized`. JSONL and CSV, compressed or not,
        stream through Polars' own scan.
        """
        if self.format != "parquet":
            yield from self.batches(self.standardized(columns), batch_rows)
            return
        yield from self._parquet_batches(self._standard_exprs(columns), batch_rows)

    def _parquet_batches(self, exprs: list[pl.Expr], batch_rows: int) -> Iterator[pl.DataFrame]:
        roots = {name for e in exprs for name in e.meta.root_names()}  # pl.element() is ""
        needed = [name for name in self.schema.names() if name in roots]
        if not needed:  # only ``row`` wanted: read one column, for the row counts
            needed = [self.schema.names()[0]]
        pending: list[pl.DataFrame] = []
        buffered = start = 0

        def emit(frame: pl.DataFrame) -> pl.DataFrame:
            nonlocal start
            frame = frame.with_row_index("__row", offset=start)
            start += frame.height
            return frame.lazy().select(exprs).collect()

        for path in self.files:
            try:
                scan = pl.scan_parquet(path)
                found = scan.collect_schema()
                check_parquet_columns(path, self.files[0], found, self.schema, needed)
                scan = scan.select(needed)
                offset = 0
                while True:
                    # A slice reads only the row groups (and pages) it covers: no read-ahead.
                    frame = scan.slice(offset, batch_rows).collect()
                    offset += frame.height
                    if frame.height:
                        pending.append(frame)
                        buffered += frame.height
                    while buffered >= batch_rows:
                        whole = pl.concat(pending) if len(pending) > 1 else pending[0]
                        rest = whole.slice(batch_rows)
                        pending, buffered = ([rest] if rest.height else []), rest.height
                        yield emit(whole.slice(0, batch_rows))
                        del whole, rest
                    if frame.height < batch_rows:
                        break
            except CorpusError:
                raise
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise corpus_error([path], self.format, exc) from exc
        if buffered:
            try:
                yield emit(pl.concat(pending) if len(pending) > 1 else pending[0])
            except pl.exceptions.PolarsError as exc:
                raise corpus_error(self.files[-1:], self.format, exc) from exc

    def batches(self, lazy: pl.LazyFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
        """Stream ``lazy`` in order, in batches of about ``batch_rows`` rows; read errors become
        :class:`CorpusError` naming the file and line."""
        try:
            yield from lazy.collect_batches(chunk_size=batch_rows, maintain_order=True)
        except CorpusError:
            raise
        except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
            raise corpus_error(self.files, self.format, exc) from exc

    def collect(self, lazy: pl.LazyFrame) -> pl.DataFrame:
        """Collect ``lazy`` whole (small corpora, tests), with the same error translation."""
        try:
            return lazy.collect()
        except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
            raise corpus_error(self.files, self.format, exc) from exc


def open_corpus(spec: str | os.PathLike[str], options: ColumnOptions | None = None) -> Corpus:
    """Find the files, read the schema, map the columns; raises :class:`CorpusError`.

    Reading the schema touches only file footers (Parquet) or the first rows (JSONL, CSV).
    """
    files, fmt = resolve_input_files(spec)
    lazy = _scan(files, fmt)
    try:
        schema = lazy.collect_schema()
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise corpus_error(files, fmt, exc) from exc
    names = list(schema.names())
    if not names:
        raise CorpusError(f"input '{spec}' has no columns")
    columns = detect_columns(names, options or ColumnOptions())
    options = options or ColumnOptions()
    corpus = Corpus(
        str(spec), files, fmt, schema, columns, lazy, PromptFormat(options.context_format)
    )
    corpus._messages_expr()  # type checks of the mapped columns fail here, before any read
    return corpus
