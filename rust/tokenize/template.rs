//! A Hugging Face chat template compiled with minijinja, configured like transformers'
//! `_compile_jinja_template`: `trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
//! a `tojson` that is Python's `json.dumps(ensure_ascii=False)`, `strftime_now`, Python string
//! and dict methods (minijinja-contrib pycompat), Python's spelling of printed values
//! (`None`, `True`), and the `{% generation %}` block tag (its body is rendered as is).
//!
//! A template comes from whatever model folder the user names, so it is untrusted code, run for
//! every row of a corpus. Each render has a bounded cost ([`TemplateLimits`]): minijinja's fuel
//! (one per instruction, one per 64 bytes the template builds or walks; our minijinja is patched
//! so that nothing a template can reach escapes it, see `vendor/minijinja/MIPO-PATCHES.md`), and
//! a size limit on the rendered prompt and on every string our own filters, functions and
//! methods build, checked before it is built. A render that fails, panics included, is that
//! row's error.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

use super::pyjson::{dumps, python_str, DumpOptions};
use crate::error::{EngineError, Result};

const TEMPLATE_NAME: &str = "chat_template";

/// What rendering one conversation may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateLimits {
    /// minijinja fuel per render: one per template instruction, one per 64 bytes of strings
    /// and lists the template builds, prints, compares or serializes. Bounds the time of a
    /// render and the memory it allocates (at most about 64 bytes per fuel).
    pub fuel: u64,
    /// The longest rendered prompt in bytes, also the largest string `tojson`, printing a
    /// value, `str.format` or `str.join` may build (checked before it is built).
    pub max_bytes: usize,
}

impl TemplateLimits {
    /// Real chat templates use about one fuel per 10 bytes of prompt (64 turns of 4 KB: at most
    /// 26 thousand), so a million renders any realistic conversation with a wide margin, while
    /// a runaway template stops within a second and about 64 MB.
    pub const DEFAULT_FUEL: u64 = 1_000_000;
    /// 4 MiB: a prompt of about a million tokens.
    pub const DEFAULT_MAX_BYTES: usize = 4 << 20;
    /// The environment variable the Python facade reads the fuel from.
    pub const FUEL_ENV: &'static str = "MIPO_TEMPLATE_FUEL";
    /// The environment variable the Python facade reads the size limit from.
    pub const MAX_BYTES_ENV: &'static str = "MIPO_TEMPLATE_MAX_BYTES";

    /// Checked limits: both must be at least 1.
    pub fn new(fuel: u64, max_bytes: usize) -> Result<Self> {
        if fuel == 0 {
            return Err(EngineError::InvalidParameter(format!(
                "the template fuel must be at least 1 (set {} to a positive integer, default {})",
                Self::FUEL_ENV,
                Self::DEFAULT_FUEL
            )));
        }
        if max_bytes == 0 {
            return Err(EngineError::InvalidParameter(format!(
                "the template size limit must be at least 1 byte (set {} to a positive integer, default {})",
                Self::MAX_BYTES_ENV,
                Self::DEFAULT_MAX_BYTES
            )));
        }
        Ok(TemplateLimits { fuel, max_bytes })
    }
}

impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            fuel: Self::DEFAULT_FUEL,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// A compiled chat template; `Send + Sync`, rendered from many threads at once.
pub struct ChatTemplate {
    env: Environment<'static>,
    limits: TemplateLimits,
    /// Names the template in errors, e.g. "the chat template of model/tokenizer_config.json".
    origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("limits", &self.limits)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source` with the default limits. A syntax error becomes
    /// `EngineError::Template` with its line.
    pub fn new(source: &str) -> Result<Self> {
        Self::with_limits(source, "the chat template", TemplateLimits::default())
    }

    /// Compile `source`; `origin` names it in errors ("the chat template of <folder>").
    pub fn with_limits(source: &str, origin: &str, limits: TemplateLimits) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(describe(&e)))?;
        env.set_syntax(syntax);
        // Debug info clones the template source into every error; we format errors ourselves.
        env.set_debug(false);
        env.set_fuel(Some(limits.fuel));
        // Not in jinja2 (so transformers would fail on them too), and each walks values in
        // ways a template can make costly: `chain` builds lazy views of views, `debug` dumps
        // the whole state.
        env.remove_filter("chain");
        env.remove_global("debug");
        let max = limits.max_bytes;
        env.set_unknown_method_callback(
            move |state: &mut State, value: &Value, method: &str, args: &[Value]| {
                python_methods(state, value, method, args, max)
            },
        );
        env.set_formatter(
            move |out: &mut minijinja::Output, state: &mut State, value: &Value| {
                python_formatter(out, state, value, max)
            },
        );
        env.add_filter(
            "tojson",
            move |state: &State, value: &Value, indent: Option<Value>, kwargs: Kwargs| {
                tojson(state, value, indent, kwargs, max)
            },
        );
        env.add_filter("trim", trim);
        env.add_filter("title", title);
        env.add_function("raise_exception", raise_exception);
        env.add_test("none", |value: Value| is_none(&value));
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| {
                EngineError::Template(format!(
                    "{origin} does not compile: {}; fix the template (it must be valid Jinja2)",
                    describe(&e)
                ))
            })?;
        Ok(ChatTemplate {
            env,
            limits,
            origin: origin.to_string(),
        })
    }

    pub fn limits(&self) -> TemplateLimits {
        self.limits
    }

    /// Adds `panic()`, a function that panics: tests of the last line of defense.
    #[cfg(test)]
    pub(crate) fn with_panicking_function(mut self) -> Self {
        self.env
            .add_function("panic", || -> Value { panic!("a test panic") });
        self
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Render with `ctx` (a map of template variables). `row` only labels errors.
    pub fn render(&self, ctx: Value, row: usize) -> Result<String> {
        self.render_measured(ctx, row).map(|(text, _)| text)
    }

    /// Render and also return the fuel the render used.
    pub fn render_measured(&self, ctx: Value, row: usize) -> Result<(String, u64)> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        quiet_render_panics();
        let rendering = RenderingFlag::enter();
        // The last line of defense: nothing a template does may unwind into rayon (which would
        // abort the process). The captured state, with everything the template built, is
        // dropped inside too.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut out = CappedOutput::new(self.limits.max_bytes);
            let fuel = tmpl
                .render_captured_to(ctx, &mut out)
                .map(|captured| captured.state().fuel_levels());
            (fuel, out)
        }));
        drop(rendering);
        let (fuel, out) = outcome.map_err(|payload| {
            EngineError::Template(format!(
                "rendering {} crashed the template engine on row {row} ({}); this is a bug in mipo: please report it with the template",
                self.origin,
                panic_message(payload.as_ref())
            ))
        })?;
        if out.overflowed {
            return Err(self.size_error(row, "the rendered prompt"));
        }
        match fuel {
            // A native walk (printing, comparing) that ran the fuel out stops early and leaves
            // the tracker exhausted; the render fails at its next charge, or here.
            Ok(Some((_, 0))) => Err(self.fuel_error(row)),
            Ok(levels) => {
                let used = levels.map_or(0, |(used, _)| used);
                let text = String::from_utf8(out.buf).map_err(|_| {
                    EngineError::Template(format!(
                        "rendering {} on row {row} produced invalid UTF-8; this is a bug in mipo: please report it with the template",
                        self.origin
                    ))
                })?;
                Ok((text, used))
            }
            Err(e) => Err(self.render_error(&e, row)),
        }
    }

    fn render_error(&self, e: &Error, row: usize) -> EngineError {
        let detail = e.detail().unwrap_or("");
        if is_out_of_fuel(e) {
            self.fuel_error(row)
        } else if let Some(what) = detail.strip_prefix(SIZE_PREFIX) {
            self.size_error(row, what)
        } else if e.kind() == ErrorKind::InvalidOperation && is_raised(e) {
            EngineError::Template(format!(
                "{} raised an error on row {row}: {}; the conversation does not fit what this template accepts (e.g. roles must alternate user/assistant)",
                self.origin,
                clip(detail.trim_start_matches(RAISED_PREFIX))
            ))
        } else {
            EngineError::Template(format!(
                "rendering {} failed on row {row}: {}; check the template and the messages it receives",
                self.origin,
                describe(e)
            ))
        }
    }

    fn fuel_error(&self, row: usize) -> EngineError {
        let fuel = self.limits.fuel;
        EngineError::TemplateLimit(format!(
            "{} ran out of fuel on row {row}: one render may take {fuel} fuel (one per template instruction and per 64 bytes the template builds or walks; real chat templates use about one per 10 bytes of prompt), so it loops or builds far more than a prompt needs; if you trust this template, raise the budget with {}={}",
            self.origin,
            TemplateLimits::FUEL_ENV,
            fuel.saturating_mul(10)
        ))
    }

    fn size_error(&self, row: usize, what: &str) -> EngineError {
        let max = self.limits.max_bytes;
        EngineError::TemplateLimit(format!(
            "{} built more than {max} bytes on row {row} ({what}); a rendered prompt, and any value the template prints, serializes, formats or joins, may be at most {max} bytes: if you trust this template and the prompt really is this long, raise the limit with {}={}",
            self.origin,
            TemplateLimits::MAX_BYTES_ENV,
            max.saturating_mul(4)
        ))
    }
}

/// The rendered prompt, refused past `max` bytes (before it grows).
struct CappedOutput {
    buf: Vec<u8>,
    max: usize,
    overflowed: bool,
}

impl CappedOutput {
    fn new(max: usize) -> Self {
        CappedOutput {
            buf: Vec::new(),
            max,
            overflowed: false,
        }
    }
}

impl io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() > self.max - self.buf.len() {
            self.overflowed = true;
            return Err(io::Error::other(
                "the rendered prompt exceeds the size limit",
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// Set while this thread renders a template (see [`quiet_render_panics`]).
    static RENDERING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as rendering until dropped.
struct RenderingFlag(bool);

impl RenderingFlag {
    fn enter() -> Self {
        RenderingFlag(RENDERING.with(|r| r.replace(true)))
    }
}

impl Drop for RenderingFlag {
    fn drop(&mut self) {
        RENDERING.with(|r| r.set(self.0));
    }
}

/// A panic inside a render becomes that row's error (with the panic's message), so the
/// default hook's report on stderr would only be noise: keep it quiet for rendering threads.
fn quiet_render_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !RENDERING.try_with(Cell::get).unwrap_or(false) {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string());
    clip(&text)
}

/// Marks the message of `raise_exception` so it is told apart from minijinja's own errors.
const RAISED_PREFIX: &str = "raise_exception: ";

/// Marks a size-limit error of our filters and functions (its detail says what was too big).
const SIZE_PREFIX: &str = "mipo size limit: ";

fn size_limit(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{SIZE_PREFIX}{what}"))
}

/// Whether `e`, or an error it wraps, is minijinja's `OutOfFuel`.
fn is_out_of_fuel(e: &Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err
            .downcast_ref::<Error>()
            .is_some_and(|e| e.kind() == ErrorKind::OutOfFuel)
        {
            return true;
        }
        current = err.source();
    }
    false
}

fn is_raised(e: &Error) -> bool {
    e.detail().is_some_and(|d| d.starts_with(RAISED_PREFIX))
}

/// Longest piece of template-made text an error message quotes.
const MAX_QUOTED: usize = 300;

/// `text` cut to [`MAX_QUOTED`] bytes (on a character boundary), on one line.
fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_QUOTED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < text.len() {
        out.push_str("...");
    }
    out
}

/// One line: kind, detail, and where in the template.
fn describe(e: &Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(detail) = e.detail() {
        let _ = write!(s, ": {detail}");
    }
    if let Some(line) = e.line() {
        let _ = write!(s, " (template line {line})");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    clip(&s)
}

/// transformers' `raise_exception(message)`: abort rendering with the template's message.
fn raise_exception(state: &State, message: String) -> std::result::Result<Value, Error> {
    // Turning a value into the message may have used up the fuel (it stops printing then).
    if state
        .fuel_levels()
        .is_some_and(|(_, remaining)| remaining == 0)
    {
        return Err(Error::from(ErrorKind::OutOfFuel));
    }
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED_PREFIX}{}", clip(&message)),
    ))
}

/// Longest format `strftime_now` accepts (real ones are a few characters; chrono expands
/// each specifier, so a long format would be a cheap way to build a long string).
const MAX_STRFTIME_FORMAT: usize = 256;

/// transformers' `strftime_now(format)`: `datetime.now().strftime(format)` (local time).
fn strftime_now(format: String) -> std::result::Result<Value, Error> {
    if format.len() > MAX_STRFTIME_FORMAT {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "strftime_now: the format is {} bytes long, more than the {MAX_STRFTIME_FORMAT} a date format needs",
                format.len()
            ),
        ));
    }
    let mut out = String::new();
    // chrono reports an unknown specifier as a fmt::Error (its `to_string` would panic).
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "strftime_now: unsupported format string {:?}",
                clip(&format)
            ),
        )
    })?;
    Ok(Value::from(out))
}

/// Python's `None` as transformers passes it for `tools` and `documents`: `is none`, false,
/// printed `None`, `tojson` null, and, as in jinja2, not iterable. (minijinja iterates a plain
/// none as an empty loop, so a template that loops over `tools` without checking would render
/// where transformers raises `'NoneType' object is not iterable`.)
#[derive(Debug)]
pub struct PyNone;

impl Object for PyNone {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }

    fn is_true(self: &Arc<Self>) -> bool {
        false
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("None")
    }
}

/// The value to pass for a template variable transformers sets to `None`.
pub fn py_none() -> Value {
    Value::from_object(PyNone)
}

fn is_none(value: &Value) -> bool {
    value.is_none() || value.downcast_object_ref::<PyNone>().is_some()
}

/// Deepest nesting `tojson` and printing accept (Python's `json.dumps` and `repr` stop near
/// a thousand levels with a RecursionError; real templates nest a handful).
const MAX_NESTING: usize = 256;

/// Walks `value` as `tojson` or printing it will, before anything is built: charges a fuel per
/// item (so a list holding the same list twice, forty levels deep, runs out of fuel instead of
/// printing 2^40 items), refuses nesting deeper than [`MAX_NESTING`], and adds up a lower bound
/// of the text's length (every item takes at least two bytes with its separator, plus its
/// indentation), refused past `max_bytes`.
struct SizeWalk<'a, 's, 'e> {
    state: &'a State<'s, 'e>,
    max_bytes: usize,
    indent: usize,
    bytes: usize,
    what: &'static str,
}

impl SizeWalk<'_, '_, '_> {
    fn visit(&mut self, value: &Value, depth: usize) -> std::result::Result<(), Error> {
        if depth > MAX_NESTING {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "{}: the value is nested deeper than {MAX_NESTING} levels",
                    self.what
                ),
            ));
        }
        self.state.consume_fuel(1)?;
        let own = match value.as_str() {
            Some(s) => s.len(),
            None => value.as_bytes().map_or(0, |b| 5 * b.len()),
        };
        self.bytes = self
            .bytes
            .saturating_add(2 + own)
            .saturating_add(self.indent.saturating_mul(depth));
        if self.bytes > self.max_bytes {
            return Err(size_limit(format_args!(
                "{} of a value longer than that",
                self.what
            )));
        }
        if own >= 64 {
            self.state.consume_fuel((own / 64) as u64)?;
        }
        if is_none(value) || value.as_str().is_some() {
            return Ok(());
        }
        match value.kind() {
            ValueKind::Seq | ValueKind::Iterable => {
                for item in value.try_iter()? {
                    self.visit(&item, depth + 1)?;
                }
            }
            ValueKind::Map => {
                if let Some(pairs) = value.as_object().and_then(|o| o.try_iter_pairs()) {
                    for (key, item) in pairs {
                        self.visit(&key, depth + 1)?;
                        self.visit(&item, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn check_size(
    state: &State,
    value: &Value,
    indent: usize,
    max_bytes: usize,
    what: &'static str,
) -> std::result::Result<(), Error> {
    SizeWalk {
        state,
        max_bytes,
        indent,
        bytes: 0,
        what,
    }
    .visit(value, 0)
}

/// `value` as JSON data (what Python's `json` module sees); walk it with [`check_size`] first.
fn to_json(value: &Value) -> std::result::Result<serde_json::Value, Error> {
    if is_none(value) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::to_value(value).map_err(|e| {
        Error::new(
            ErrorKind::BadSerialization,
            format!("tojson: cannot serialize value: {e}"),
        )
    })
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
    max_bytes: usize,
) -> std::result::Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        Some(v) => Some(v),
        None => indent,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => {
                let n = v.as_i64().ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                let n = n.max(0) as u64;
                if n > max_bytes as u64 {
                    return Err(size_limit(format_args!("tojson with indent={n}")));
                }
                " ".repeat(n as usize)
            }
        }),
    };
    let separators = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v
                .try_iter()?
                .take(3)
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    )
                })?;
            Some((parts[0].clone(), parts[1].clone()))
        }
        _ => None,
    };
    let mut options = DumpOptions::with_indent(indent, separators);
    options.sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    options.ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let indent_len = options.indent.as_ref().map_or(0, String::len);
    check_size(state, value, indent_len, max_bytes, "tojson")?;
    let text = dumps(&to_json(value)?, &options);
    if text.len() > max_bytes {
        return Err(size_limit("tojson of a value longer than that"));
    }
    Ok(Value::from(text))
}

/// Python's `str.isspace()`: Rust's `char::is_whitespace` plus the ASCII information separators
/// U+001C..U+001F, which Python's `strip()` and `split()` also treat as whitespace.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip/lstrip/rstrip(chars)`.
fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let matches = |c: char| match chars {
        Some(set) => set.contains(c),
        None => py_isspace(c),
    };
    let s = if left {
        s.trim_start_matches(matches)
    } else {
        s
    };
    if right {
        s.trim_end_matches(matches)
    } else {
        s
    }
}

/// Python's `str.split(None, maxsplit)`: runs of whitespace separate, empty pieces dropped.
fn py_split_whitespace(s: &str, maxsplit: Option<i64>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut rest = py_strip(s, None, true, false);
    while !rest.is_empty() {
        if maxsplit.is_some_and(|m| m >= 0 && out.len() as i64 >= m) {
            out.push(Value::from(rest));
            break;
        }
        match rest.char_indices().find(|(_, c)| py_isspace(*c)) {
            Some((i, _)) => {
                out.push(Value::from(&rest[..i]));
                rest = py_strip(&rest[i..], None, true, false);
            }
            None => {
                out.push(Value::from(rest));
                break;
            }
        }
    }
    out
}

/// Python string and dict methods: Python's whitespace rules for `strip`/`lstrip`/`rstrip`
/// and separator-less `split`, minijinja-contrib's pycompat for everything else. The methods
/// that can build more than they are given (`format`, `join`, `split`, `splitlines`, and a
/// list's `count`, which walks it) are charged, or checked against `max_bytes`, first.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
    max_bytes: usize,
) -> std::result::Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let plain = !args.iter().any(Value::is_kwargs);
        let arg0 = args.first().filter(|a| !a.is_none());
        match (method, args.len(), plain) {
            ("strip" | "lstrip" | "rstrip", 0 | 1, true)
                if arg0.is_none_or(|a| a.as_str().is_some()) =>
            {
                let chars = arg0.and_then(Value::as_str);
                let (l, r) = (method != "rstrip", method != "lstrip");
                return Ok(Value::from(py_strip(s, chars, l, r)));
            }
            ("split", 0..=2, true) if arg0.is_none() => {
                charge_items(state, s.split(py_isspace).filter(|w| !w.is_empty()).count())?;
                let maxsplit = args.get(1).and_then(Value::as_i64);
                return Ok(Value::from(py_split_whitespace(s, maxsplit)));
            }
            ("split", 1 | 2, true) => {
                if let Some(sep) = arg0.and_then(Value::as_str).filter(|sep| !sep.is_empty()) {
                    charge_items(state, s.matches(sep).count() + 1)?;
                }
            }
            ("splitlines", _, _) => charge_items(state, s.lines().count())?,
            ("startswith" | "endswith", 1, true)
                if matches!(args[0].kind(), ValueKind::Seq | ValueKind::Iterable) =>
            {
                // pycompat walks the candidates unpaid; they can be a long lazy sequence.
                for candidate in args[0].try_iter()? {
                    state.consume_fuel(1)?;
                    let Some(candidate) = candidate.as_str() else {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!(
                                "tuple for {method} must contain only strings, not {}",
                                candidate.kind()
                            ),
                        ));
                    };
                    let hit = if method == "startswith" {
                        s.starts_with(candidate)
                    } else {
                        s.ends_with(candidate)
                    };
                    if hit {
                        return Ok(Value::from(true));
                    }
                }
                return Ok(Value::from(false));
            }
            ("format", _, _) => check_format(s, args, max_bytes)?,
            ("join", 1, true) => return join(state, s, &args[0], max_bytes),
            _ => {}
        }
    } else if value.kind() == ValueKind::Seq && method == "count" {
        let [needle] = args else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "list.count() takes exactly one argument",
            ));
        };
        let mut n = 0usize;
        for item in value.try_iter()? {
            state.consume_fuel(1)?;
            n += usize::from(item == *needle);
        }
        return Ok(Value::from(n));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Charges for a list of `n` items before it is built (half a fuel a slot, as minijinja).
fn charge_items(state: &State, n: usize) -> std::result::Result<(), Error> {
    state.consume_fuel((n as u64).div_ceil(2))
}

/// Refuses a `str.format` that could build more than `max_bytes`: every replacement field
/// writes at most its width or precision (any number in the format string) or the longest
/// argument.
fn check_format(format: &str, args: &[Value], max_bytes: usize) -> std::result::Result<(), Error> {
    let mut widest: u64 = 0;
    let mut number: u64 = 0;
    for c in format.chars() {
        match c.to_digit(10) {
            Some(d) => number = number.saturating_mul(10).saturating_add(d as u64),
            None => {
                widest = widest.max(number);
                number = 0;
            }
        }
    }
    widest = widest.max(number);
    let fields = format.matches('{').count() as u64;
    let longest_arg = args
        .iter()
        .map(|a| a.as_str().map_or(32, str::len) as u64)
        .max()
        .unwrap_or(0);
    let bound = (format.len() as u64)
        .saturating_add(fields.saturating_mul(widest.saturating_add(longest_arg)));
    if widest > max_bytes as u64 || bound > max_bytes as u64 {
        return Err(size_limit(format_args!(
            "str.format with a width or arguments that large"
        )));
    }
    Ok(())
}

/// Python's `sep.join(items)` (pycompat's spelling of each item), refused before the result
/// grows past `max_bytes`.
fn join(
    state: &State,
    sep: &str,
    items: &Value,
    max_bytes: usize,
) -> std::result::Result<Value, Error> {
    let mut out = String::new();
    for (i, item) in items.try_iter()?.enumerate() {
        state.consume_fuel(1)?;
        let text = match item.as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(item.to_string()),
        };
        let sep = if i > 0 { sep } else { "" };
        if out.len() + sep.len() + text.len() > max_bytes {
            return Err(size_limit("str.join of items longer than that"));
        }
        out.push_str(sep);
        out.push_str(&text);
    }
    Ok(Value::from(out))
}

/// jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
fn trim(value: &Value, chars: Option<String>) -> Value {
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    };
    Value::from(py_strip(&text, chars.as_deref(), true, true))
}

/// jinja2's `title`: split after runs of `-`, whitespace, `(`, `{`, `[`, `<`; each piece's
/// first character upper-cased and the rest lower-cased.
fn title(value: &Value) -> Value {
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    };
    let is_sep = |c: char| py_isspace(c) || matches!(c, '-' | '(' | '{' | '[' | '<');
    let mut out = String::with_capacity(text.len());
    let mut at_word_start = true;
    for c in text.chars() {
        if is_sep(c) {
            out.push(c);
            at_word_start = true;
        } else if at_word_start {
            out.extend(c.to_uppercase());
            at_word_start = false;
        } else {
            out.extend(c.to_lowercase());
        }
    }
    Value::from(out)
}

/// Print values as jinja2 does (Python's `str()`): `None`, `True`, `1.0`, `['a']`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
    max_bytes: usize,
) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::String | ValueKind::Undefined => minijinja::escape_formatter(out, state, value),
        ValueKind::Number if value.is_integer() => minijinja::escape_formatter(out, state, value),
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            check_size(state, value, 0, max_bytes, "printing")?;
            let text = python_str(&to_json(value)?);
            out.write_str(&text)
                .map_err(|_| Error::new(ErrorKind::WriteFailure, "formatting failed"))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Replace transformers' `{% generation %}` / `{% endgeneration %}` extension tags (which
/// minijinja does not know) by `{% if true %}` / `{% endif %}`: block tags too, so
/// `trim_blocks`/`lstrip_blocks` and `-`/`+` markers treat them identically, and the body is
/// rendered as is, as transformers does outside assistant-mask tracking.
pub fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match parse_generation_tag(tag) {
            Some((len, open_marker, end, close_marker)) => {
                let _ = write!(
                    out,
                    "{{%{open_marker} {} {close_marker}%}}",
                    if end { "endif" } else { "if true" }
                );
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `{%[-+]? \s* (end)?generation \s* [-+]? %}` at the start of `s`:
/// (length, open marker, is end tag, close marker).
fn parse_generation_tag(s: &str) -> Option<(usize, &str, bool, &str)> {
    let mut i = 2;
    let bytes = s.as_bytes();
    let open = match bytes.get(i) {
        Some(b'-') | Some(b'+') => {
            i += 1;
            &s[2..3]
        }
        _ => "",
    };
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    let (end, word_len) = if s[i..].starts_with("endgeneration") {
        (true, "endgeneration".len())
    } else if s[i..].starts_with("generation") {
        (false, "generation".len())
    } else {
        return None;
    };
    i += word_len;
    let ws_start = i;
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    if i == ws_start && !matches!(bytes.get(i), Some(b'-') | Some(b'+') | Some(b'%')) {
        return None; // e.g. `{% generation_prompt ... %}` is not our tag
    }
    let close = match bytes.get(i) {
        Some(b'-') | Some(b'+') => {
            i += 1;
            &s[i - 1..i]
        }
        _ => "",
    };
    if s[i..].starts_with("%}") {
        Some((i + 2, open, end, close))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn render(src: &str, ctx: Value) -> Result<String> {
        ChatTemplate::new(src)?.render(ctx, 0)
    }

    #[test]
    fn trims_blocks_like_transformers() {
        let src = "{% for m in messages %}\n    {{ m }}\n{% endfor %}\n";
        let out = render(src, context! { messages => vec!["a", "b"] }).unwrap();
        assert_eq!(out, "    a\n    b\n");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let src =
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(separators=(',', ':')) }}";
        let x = serde_json::json!({"a": "<b>&é", "n": [1, 2.0]});
        let out = render(
            src,
            context! { x => Value::from(minijinja::value::Serde(&x)) },
        )
        .unwrap();
        assert_eq!(
            out,
            "{\"a\": \"<b>&é\", \"n\": [1, 2.0]}|{\n  \"a\": \"<b>&é\",\n  \"n\": [\n    1,\n    2.0\n  ]\n}|{\"a\":\"<b>&é\",\"n\":[1,2.0]}"
        );
    }

    #[test]
    fn prints_python_spellings() {
        let out = render(
            "{{ none }} {{ true }} {{ 1.0 }} {{ ['a', 1] }} {{ missing }}.",
            context! {},
        )
        .unwrap();
        assert_eq!(out, "None True 1.0 ['a', 1] .");
    }

    #[test]
    fn raise_exception_carries_message() {
        let err = render("{{ raise_exception('roles must alternate') }}", context! {}).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EngineError::Template(_)));
        assert!(msg.contains("roles must alternate"), "{msg}");
        assert!(!msg.contains(RAISED_PREFIX), "{msg}");
    }

    #[test]
    fn syntax_error_is_template_error() {
        let err = ChatTemplate::new("{% for x in %}").unwrap_err();
        assert!(matches!(err, EngineError::Template(_)), "{err}");
        assert!(err.to_string().contains("does not compile"));
    }

    #[test]
    fn pycompat_methods() {
        let out = render(
            "{{ s.strip() }}|{{ s.startswith(' a') }}|{{ s.split() | join(',') }}|{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}",
            context! { s => " a b ", d => context!{ x => 1 } },
        )
        .unwrap();
        assert_eq!(out, "a b|True|a,b|x=1");
    }

    #[test]
    fn generation_tag_renders_body() {
        let src = "{% for m in messages %}\n{%- generation -%}\n[{{ m }}]\n{%- endgeneration %}\n{% endfor %}";
        assert_eq!(
            rewrite_generation_tags(src),
            "{% for m in messages %}\n{%- if true -%}\n[{{ m }}]\n{%- endif %}\n{% endfor %}"
        );
        let out = render(src, context! { messages => vec!["a", "b"] }).unwrap();
        assert_eq!(out, "[a][b]");
        assert_eq!(
            rewrite_generation_tags("{% generation_x %}{%generation%}"),
            "{% generation_x %}{% if true %}"
        );
    }

    #[test]
    fn strftime_now_formats_and_rejects_bad_formats() {
        let out = render("{{ strftime_now('%Y') }}", context! {}).unwrap();
        assert_eq!(out.len(), 4);
        let err = render("{{ strftime_now('%Q') }}", context! {}).unwrap_err();
        assert!(err.to_string().contains("unsupported format"), "{err}");
    }

    #[test]
    fn python_whitespace_rules() {
        let out = render(
            "[{{ s.strip() }}|{{ s | trim }}|{{ s.split() | join(',') }}|{{ s.split(none, 1) | join(',') }}|{{ 'xxhixx'.strip('x') }}|{{ 'hello wORLD-foo(bar' | title }}]",
            context! { s => "\u{1c} a  b\u{1f}c \u{a0}" },
        )
        .unwrap();
        assert_eq!(
            out,
            "[a  b\u{1f}c|a  b\u{1f}c|a,b,c|a,b\u{1f}c \u{a0}|hi|Hello World-Foo(Bar]"
        );
    }

    #[test]
    fn loop_controls() {
        let out = render(
            "{% for i in [1,2,3,4] %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}",
            context! {},
        )
        .unwrap();
        assert_eq!(out, "13");
    }
}
