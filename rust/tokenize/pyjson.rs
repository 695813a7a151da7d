//! Python's `json.dumps` and `repr` for template values, so that rendered prompts match
//! transformers byte for byte.
//!
//! transformers overrides jinja2's `tojson` filter with `json.dumps(x, ensure_ascii=False, ...)`
//! (no HTML escaping, `", "` / `": "` separators), and jinja2 prints values with Python's `str()`
//! (`None`, `True`, `['a', 'b']`). minijinja's defaults differ on every one of these points.

use serde_json::Value as Json;

/// Options of `json.dumps` that chat templates pass to `tojson`.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// `indent`: None for a single line; otherwise the string repeated per nesting level.
    pub indent: Option<String>,
    /// `(item_separator, key_separator)`.
    pub separators: (String, String),
    pub sort_keys: bool,
    pub ensure_ascii: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            indent: None,
            separators: (", ".into(), ": ".into()),
            sort_keys: false,
            ensure_ascii: false,
        }
    }
}

impl DumpOptions {
    /// Python's rule: with an indent, the default item separator drops its trailing space.
    pub fn with_indent(indent: Option<String>, separators: Option<(String, String)>) -> Self {
        let separators = separators.unwrap_or_else(|| match indent {
            Some(_) => (",".into(), ": ".into()),
            None => (", ".into(), ": ".into()),
        });
        DumpOptions {
            indent,
            separators,
            ..DumpOptions::default()
        }
    }
}

/// `json.dumps(value, **options)`.
pub fn dumps(value: &Json, options: &DumpOptions) -> String {
    let mut out = String::new();
    write_json(&mut out, value, options, 0);
    out
}

fn newline_indent(out: &mut String, options: &DumpOptions, level: usize) {
    if let Some(indent) = &options.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn write_json(out: &mut String, value: &Json, options: &DumpOptions, level: usize) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(true) => out.push_str("true"),
        Json::Bool(false) => out.push_str("false"),
        Json::Number(n) => write_number(out, n, true),
        Json::String(s) => write_json_str(out, s, options.ensure_ascii),
        Json::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            newline_indent(out, options, level + 1);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.separators.0);
                    newline_indent(out, options, level + 1);
                }
                write_json(out, item, options, level + 1);
            }
            newline_indent(out, options, level);
            out.push(']');
        }
        Json::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            newline_indent(out, options, level + 1);
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.separators.0);
                    newline_indent(out, options, level + 1);
                }
                write_json_str(out, key, options.ensure_ascii);
                out.push_str(&options.separators.1);
                write_json(out, item, options, level + 1);
            }
            newline_indent(out, options, level);
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &serde_json::Number, json: bool) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&float_repr(f, json));
    }
}

/// Python's `repr(float)` (shortest round-trip digits; exponent form outside 1e-4 .. 1e16).
/// `json` selects the spelling of non-finite values (`NaN`/`Infinity` vs `nan`/`inf`).
pub fn float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        let s = if json { "Infinity" } else { "inf" };
        return if f < 0.0 { format!("-{s}") } else { s.into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like Python's repr: "d.ddde-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1; // position of the decimal point relative to the digits
    if (-4 < decpt) && (decpt <= 16) {
        let n = digits.len() as i32;
        let body = if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt >= n {
            format!("{}{}.0", digits, "0".repeat((decpt - n) as usize))
        } else {
            let (a, b) = digits.split_at(decpt as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

/// A JSON string literal exactly as Python's json module writes it.
pub fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `str(value)` for a value printed by `{{ ... }}` (strings print as themselves).
pub fn python_str(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => python_repr(other),
    }
}

/// Python's `repr(value)` for JSON-like data.
pub fn python_repr(value: &Json) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Json) {
    match value {
        Json::Null => out.push_str("None"),
        Json::Bool(true) => out.push_str("True"),
        Json::Bool(false) => out.push_str("False"),
        Json::Number(n) => write_number(out, n, false),
        Json::String(s) => write_repr_str(out, s),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push(']');
        }
        Json::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr_str(out, key);
                out.push_str(": ");
                write_repr(out, item);
            }
            out.push('}');
        }
    }
}

/// Characters `str.isprintable()` rejects that can plausibly appear in chat data. (The full
/// Unicode rule needs the category tables; this covers controls, separators and format marks.)
fn is_unprintable(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x2064).contains(&u)
        || u == 0x1680
        || u == 0x3000
        || u == 0xfeff
}

fn write_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_unprintable(c) => {
                let u = c as u32;
                if u <= 0xff {
                    out.push_str(&format!("\\x{u:02x}"));
                } else {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dumps_matches_python_defaults() {
        let v = json!({"a": [1, 2.5, null, true], "b": "x\"<>&é\n\u{1}", "c": {}});
        assert_eq!(
            dumps(&v, &DumpOptions::default()),
            r#"{"a": [1, 2.5, null, true], "b": "x\"<>&é\n\u0001", "c": {}}"#
        );
    }

    #[test]
    fn dumps_with_indent_and_ascii() {
        let v = json!({"a": [1, {"b": "é😀"}], "e": []});
        let mut o = DumpOptions::with_indent(Some("  ".into()), None);
        assert_eq!(
            dumps(&v, &o),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": \"é😀\"\n    }\n  ],\n  \"e\": []\n}"
        );
        o = DumpOptions {
            ensure_ascii: true,
            ..DumpOptions::default()
        };
        assert_eq!(
            dumps(&v, &o),
            r#"{"a": [1, {"b": "\u00e9\ud83d\ude00"}], "e": []}"#
        );
    }

    #[test]
    fn floats_like_python_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(float_repr(f, false), s, "{f}");
        }
        assert_eq!(float_repr(f64::NAN, true), "NaN");
        assert_eq!(float_repr(f64::NEG_INFINITY, false), "-inf");
    }

    #[test]
    fn repr_like_python() {
        let v = json!({"role": "user", "it's": ["a\n", null, true, 3]});
        assert_eq!(
            python_repr(&v),
            r#"{'role': 'user', "it's": ['a\n', None, True, 3]}"#
        );
    }
}
