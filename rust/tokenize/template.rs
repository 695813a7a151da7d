//! A Hugging Face chat template compiled with minijinja, configured like transformers'
//! `_compile_jinja_template`: `trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
//! a `tojson` that is Python's `json.dumps(ensure_ascii=False)`, `strftime_now`, Python string
//! and dict methods (minijinja-contrib pycompat), Python's spelling of printed values
//! (`None`, `True`), and the `{% generation %}` block tag (its body is rendered as is).

use std::fmt::Write as _;

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

use super::pyjson::{dumps, python_str, DumpOptions};
use crate::error::{EngineError, Result};

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template; `Send + Sync`, rendered from many threads at once.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`. A syntax error becomes `EngineError::Template` with its line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(describe(&e)))?;
        env.set_syntax(syntax);
        // Debug info clones the template source into every error; we format errors ourselves.
        env.set_debug(false);
        env.set_unknown_method_callback(python_methods);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_filter("trim", trim);
        env.add_filter("title", title);
        env.add_function("raise_exception", raise_exception);
        env.add_test("none", |value: Value| is_none(&value));
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| {
                EngineError::Template(format!(
                    "the chat template does not compile: {}; fix the template (it must be valid Jinja2)",
                    describe(&e)
                ))
            })?;
        Ok(ChatTemplate { env })
    }

    /// Render with `ctx` (a map of template variables). `row` only labels errors.
    pub fn render(&self, ctx: Value, row: usize) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        tmpl.render(ctx).map_err(|e| {
            if e.kind() == ErrorKind::InvalidOperation && is_raised(&e) {
                EngineError::Template(format!(
                    "the chat template raised an error on row {row}: {}; the conversation does not fit what this template accepts (e.g. roles must alternate user/assistant)",
                    e.detail().unwrap_or("").trim_start_matches(RAISED_PREFIX)
                ))
            } else {
                EngineError::Template(format!(
                    "rendering the chat template failed on row {row}: {}; check the template and the messages it receives",
                    describe(&e)
                ))
            }
        })
    }
}

/// Marks the message of `raise_exception` so it is told apart from minijinja's own errors.
const RAISED_PREFIX: &str = "raise_exception: ";

fn is_raised(e: &Error) -> bool {
    e.detail().is_some_and(|d| d.starts_with(RAISED_PREFIX))
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
    s
}

/// transformers' `raise_exception(message)`: abort rendering with the template's message.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED_PREFIX}{message}"),
    ))
}

/// transformers' `strftime_now(format)`: `datetime.now().strftime(format)` (local time).
fn strftime_now(format: String) -> std::result::Result<Value, Error> {
    let mut out = String::new();
    // chrono reports an unknown specifier as a fmt::Error (its `to_string` would panic).
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format string {format:?}"),
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
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
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
                " ".repeat(n.max(0) as usize)
            }
        }),
    };
    let separators = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v
                .try_iter()?
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
    Ok(Value::from(dumps(&to_json(value)?, &options)))
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
/// and separator-less `split`, minijinja-contrib's pycompat for everything else.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
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
                let maxsplit = args.get(1).and_then(Value::as_i64);
                return Ok(Value::from(py_split_whitespace(s, maxsplit)));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
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
) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::String | ValueKind::Undefined => minijinja::escape_formatter(out, state, value),
        ValueKind::Number if value.is_integer() => minijinja::escape_formatter(out, state, value),
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
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
