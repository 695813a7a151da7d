//! Hostile chat templates: a model folder is untrusted, and so is its template. Each attack
//! must end quickly in a typed error (or a harmless render), never in a hang, a panic or an
//! aborted process, on any number of threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use minijinja::context;
use minijinja::value::{Object, Value};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::Tokenizer;

use super::{ChatTemplate, ChatTokenizer, Conversations, Message, SpecialTokens, TemplateLimits};
use crate::error::{EngineError, Result};

/// Limits small enough to keep the debug-build tests fast; every attack below is stopped by
/// their kind of limit, whatever its size.
fn small() -> TemplateLimits {
    TemplateLimits::new(100_000, 1 << 20).unwrap()
}

fn render_with(src: &str, limits: TemplateLimits, ctx: Value) -> Result<String> {
    ChatTemplate::with_limits(src, "the hostile template", limits)?.render(ctx, 7)
}

fn messages() -> Value {
    context! { messages => vec![context! { role => "user", content => "hello" }] }
}

/// Renders `src`; it must fail with a typed error naming the row and the template, within
/// `seconds`, and that error's message must hold every fragment.
fn refused(src: &str, limits: TemplateLimits, fragments: &[&str]) -> EngineError {
    let start = Instant::now();
    let err = render_with(src, limits, messages()).expect_err(src);
    let elapsed = start.elapsed();
    // A hang detector, generous for debug builds on a busy machine; the CLI tests time the
    // release build.
    assert!(elapsed < Duration::from_secs(30), "{src}: took {elapsed:?}");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    for fragment in fragments {
        assert!(msg.contains(fragment), "{src}: {msg:?} lacks {fragment:?}");
    }
    err
}

fn out_of_fuel(src: &str) {
    let err = refused(
        src,
        small(),
        &[
            "the hostile template ran out of fuel on row 7",
            "100000 fuel",
            "MIPO_TEMPLATE_FUEL=",
        ],
    );
    assert!(matches!(err, EngineError::TemplateLimit(_)), "{err:?}");
}

fn too_big(src: &str, what: &str) {
    let err = refused(
        src,
        small(),
        &[
            "the hostile template built more than 1048576 bytes on row 7",
            what,
            "MIPO_TEMPLATE_MAX_BYTES=",
        ],
    );
    assert!(matches!(err, EngineError::TemplateLimit(_)), "{err:?}");
}

fn template_error(src: &str, fragment: &str) {
    let err = refused(src, small(), &[fragment]);
    assert!(matches!(err, EngineError::Template(_)), "{err:?}");
}

#[test]
fn huge_loops_run_out_of_fuel() {
    out_of_fuel("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    out_of_fuel("{% for x in [1] * 100000000 %}{% endfor %}");
    out_of_fuel("{{ ([1] * 100000000) | sum }}");
}

#[test]
fn default_fuel_stops_a_loop_quickly() {
    let limits = TemplateLimits::default();
    let src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let err = refused(src, limits, &["ran out of fuel", "1000000 fuel"]);
    assert!(matches!(err, EngineError::TemplateLimit(_)));
}

#[test]
fn doubling_a_list_runs_out_of_fuel() {
    // The attack: `+` stays lazy, then materializes a chain grown to 2^33 items.
    out_of_fuel("{% set ns = namespace(x=[1]) %}{% for i in range(100) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x | length }}");
    // The same through recursion, and through lists of lists.
    out_of_fuel("{% macro f(x, n) %}{% if n %}{{ f(x + x, n - 1) }}{% else %}{{ x | length }}{% endif %}{% endmacro %}{{ f([1], 60) }}");
    out_of_fuel("{% set ns = namespace(x=[1]) %}{% for i in range(100) %}{% set ns.x = ns.x | list + ns.x | list %}{% endfor %}{{ ns.x | length }}");
}

#[test]
fn doubling_a_string_runs_out_of_fuel() {
    out_of_fuel("{% set ns = namespace(s='a') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}");
    out_of_fuel("{{ 'a' * 10**12 }}");
    out_of_fuel("{% set s = 'a' * 60000 %}{{ s.replace('a', s) | length }}");
}

#[test]
fn printing_a_shared_structure_runs_out_of_fuel() {
    // Forty levels of a list holding the previous level twice: built with forty
    // instructions, printed it would be 2^40 items.
    let mut src =
        String::from("{% set a0 = 'aaaaaaaaaaaaaaaa' %}{% set b0 = 'aaaaaaaaaaaaaaaa' %}");
    for i in 1..=40 {
        src += &format!(
            "{{% set a{i} = [a{j}, a{j}] %}}{{% set b{i} = [b{j}, b{j}] %}}",
            j = i - 1
        );
    }
    for tail in [
        "{{ ('' ~ a40) | length }}",
        "{{ a40 | string | length }}",
        "{{ a40 | join(',') | length }}",
        "{{ a40 | pprint | length }}",
        "{{ raise_exception(a40) }}",
        "{{ a40 == b40 }}",
        "{{ a40 < b40 }}",
        "{{ [a40, b40] | sort | length }}",
        "{{ {a40: 1} | length }}",
        "{{ a40 | tojson | length }}",
        "{{ a40 }}",
    ] {
        out_of_fuel(&(src.clone() + tail));
    }
}

#[test]
fn lazy_sequences_are_charged_as_they_are_walked() {
    for tail in [
        "big | list | length",
        "big | sort | length",
        "big | unique | list | length",
        "big | reverse | first",
        "big | join | length",
        "2 in big",
        "big == big | list",
        "big | last",
        "big | max",
        "big | batch(3) | list | length",
        "big | map('string') | list | length",
        "(big + big + big)[-1]",
        "'abc'.startswith(['x'] * 100000000)",
    ] {
        out_of_fuel(&format!(
            "{{% set big = [1] * 100000000 %}}{{{{ {tail} }}}}"
        ));
    }
}

#[test]
fn long_strings_are_charged_by_the_byte() {
    // Each item costs the same fuel whatever its length, but comparing, hashing, case
    // folding, summing or escaping a 100 KB string walks all of it.
    for tail in [
        "big | min | length",
        "big | max(case_sensitive=true) | length",
        "big | sort | length",
        "big | unique | list | length",
        "big | sum(start='') | length",
        "(s * 10) | escape | length",
        "(s[1:] ~ 'b') in big",
        "big | unique(case_sensitive=true) | list | length",
    ] {
        out_of_fuel(&format!(
            "{{% set s = 'a' * 100000 %}}{{% set big = [s ~ ''] * 100000 %}}{{{{ {tail} }}}}"
        ));
    }
    for tail in [
        "{% if s is lower %}{% endif %}",
        "{{ s[-1] }}",
        "{{ s[-2:] }}",
    ] {
        out_of_fuel(&format!(
            "{{% set s = 'a' * 100000 %}}{{% for i in range(100000) %}}{tail}{{% endfor %}}"
        ));
    }
}

#[test]
fn unpacking_a_long_sequence_stops_early() {
    template_error(
        "{% set a, b = [1] * 100000000 %}",
        "sequence of wrong length (expected 2, got more)",
    );
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    // 50 000 levels: dropping them recursively would overflow a thread's stack.
    let build = "{% set ns = namespace(x=[], y=[]) %}{% for i in range(500) %}{% for j in range(10) %}{% set ns.x = [[[[[[[[[[ns.x]]]]]]]]]] %}{% set ns.y = [[[[[[[[[[ns.y]]]]]]]]]] %}{% endfor %}{% endfor %}";
    let limits = TemplateLimits::new(2_000_000, 1 << 20).unwrap();
    assert_eq!(
        render_with(&format!("{build}done"), limits, messages()).unwrap(),
        "done"
    );
    for print in ["{{ ns.x }}", "{{ ns.x | tojson }}"] {
        let err = render_with(&format!("{build}{print}"), limits, messages()).unwrap_err();
        assert!(
            err.to_string().contains("nested deeper than 256 levels"),
            "{err}"
        );
    }
    for walk in [
        "{{ '' ~ ns.x }}",
        "{{ ns.x == ns.y }}",
        "{{ ns.x < ns.y }}",
        "{{ ns.x | pprint }}",
        "{{ {ns.x: 1} }}",
    ] {
        let err = render_with(&format!("{build}{walk}"), limits, messages()).unwrap_err();
        assert!(
            matches!(err, EngineError::TemplateLimit(_)),
            "{walk}: {err}"
        );
    }
}

#[test]
fn unbounded_recursion_hits_the_recursion_limit() {
    template_error(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "recursion limit exceeded",
    );
    template_error(
        "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
        "recursion limit exceeded",
    );
    template_error(
        &format!(
            "{}1{}",
            "{{ ".to_string() + &"(".repeat(2000),
            ")".repeat(2000) + " }}"
        ),
        "does not compile",
    );
}

#[test]
fn huge_values_our_functions_would_build_are_refused_first() {
    too_big(
        "{{ messages | tojson(indent=10**12) }}",
        "tojson with indent",
    );
    too_big("{{ '{:>999999999999}'.format(1) }}", "str.format");
    too_big(
        "{{ '{0}' * 1000 }}{{ ('{0}' * 1000).format('a' * 10000) }}",
        "str.format",
    );
    too_big(
        "{{ ''.join(['a' * 100000] * 100000) | length }}",
        "str.join",
    );
    too_big(
        "{{ (['x' * 10000] * 200) | tojson(indent=2) | length }}",
        "tojson",
    );
    too_big("{{ (['x' * 100000] * 20) | list }}", "printing");
    out_of_fuel("{{ ('a ' * 10000000).split() | length }}");
    out_of_fuel("{{ ('a,' * 10000000).split(',') | length }}");
    out_of_fuel("{{ ('\\n' * 10000000).splitlines() | length }}");
    out_of_fuel("{{ '%999999999999s' | format(1) }}");
    out_of_fuel("{{ 'a\\nb' | indent(10**12) }}");
    template_error(
        &format!("{{{{ strftime_now('{}') }}}}", "%c".repeat(1000)),
        "strftime_now: the format is 2000 bytes long",
    );
}

#[test]
fn the_rendered_prompt_is_capped() {
    too_big(
        "{% for i in range(100) %}{{ 'x' * 20000 }}{% endfor %}",
        "the rendered prompt",
    );
    too_big(
        "{% for i in range(100000) %}{{ 'abc' * 1000000 }}{% endfor %}",
        "the rendered prompt",
    );
}

#[test]
fn huge_ranges_are_refused() {
    template_error(
        "{{ range(10**12) | list | length }}",
        "range has too many elements",
    );
}

#[test]
fn local_files_cannot_be_read() {
    for src in [
        "{% include '/etc/passwd' %}",
        "{% import '/etc/passwd' as p %}{{ p }}",
        "{% from '/etc/passwd' import x %}{{ x }}",
        "{% extends '/etc/passwd' %}",
    ] {
        let msg = refused(src, small(), &["template not found"]).to_string();
        assert!(!msg.contains("root:"), "{msg}");
    }
}

#[test]
fn python_internals_are_not_reachable() {
    for src in [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__['os'].system('true') }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ raise_exception.__globals__ }}",
    ] {
        match render_with(src, small(), messages()) {
            Ok(out) => assert_eq!(out, "", "{src}"),
            Err(err) => assert!(matches!(err, EngineError::Template(_)), "{src}: {err}"),
        }
    }
}

#[test]
fn syntax_errors_and_raises_are_template_errors() {
    template_error("{% for x in %}", "does not compile");
    template_error("{% if %}{% endfor %}", "does not compile");
    let err = refused(
        &format!("{{{{ raise_exception('{}') }}}}", "x".repeat(5000)),
        small(),
        &["the hostile template raised an error on row 7: xxx", "..."],
    );
    assert!(err.to_string().len() < 1000, "{err}");
}

#[test]
fn minijinja_only_helpers_are_gone() {
    template_error("{{ messages | chain(messages) | list }}", "unknown filter");
    template_error("{{ debug() }}", "unknown function");
}

#[derive(Debug)]
struct Probe;

impl Object for Probe {}

#[test]
fn reference_cycles_are_freed_when_the_render_ends() {
    // A namespace holding itself is never freed by reference counting; the render empties
    // its namespaces when it ends, so what they hold (here, a probe) is released.
    let probe = Arc::new(Probe);
    let ctx = context! { probe => Value::from_dyn_object(probe.clone()) };
    let out = render_with(
        "{% set ns = namespace(p=probe) %}{% set ns.me = ns %}{% set ns.list = [ns, [ns]] %}ok",
        small(),
        ctx,
    )
    .unwrap();
    assert_eq!(out, "ok");
    assert_eq!(Arc::strong_count(&probe), 1);
}

fn word_tokenizer() -> Tokenizer {
    let vocab = [("<unk>".to_string(), 0), ("ok".to_string(), 1)]
        .into_iter()
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(WhitespaceSplit));
    tok
}

#[test]
fn every_thread_count_reports_the_first_row_quickly() {
    // A template that fails every row, on 200 rows: the lowest row is reported, and the rows
    // after a failure are skipped, so this costs a few renders, not 200.
    let tok = ChatTokenizer::new(
        word_tokenizer(),
        Some(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                .into(),
        ),
        SpecialTokens::default(),
    )
    .unwrap()
    .with_template_limits(TemplateLimits::new(200_000, 1 << 20).unwrap())
    .unwrap();
    let rows: Conversations = (0..200)
        .map(|_| {
            vec![Message {
                role: "user",
                content: "hi",
            }]
        })
        .collect();
    for threads in [1, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let start = Instant::now();
        let err = pool.install(|| tok.encode_chat(&rows, true)).unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err, EngineError::TemplateLimit(_)), "{err}");
        assert!(err.to_string().contains("on row 0:"), "{err}");
        assert!(
            elapsed < Duration::from_secs(30),
            "{threads} threads: {elapsed:?}"
        );
    }
}

#[test]
fn a_panic_is_that_rows_error_on_any_thread() {
    let template = ChatTemplate::with_limits(
        "{% if messages[0].content == 'boom' %}{{ panic() }}{% endif %}ok",
        "the hostile template",
        small(),
    )
    .unwrap()
    .with_panicking_function();
    let mut tok = ChatTokenizer::new(
        word_tokenizer(),
        Some("ok".into()),
        SpecialTokens::default(),
    )
    .unwrap();
    tok.template = Some(template);
    let mut rows = vec![
        vec![Message {
            role: "user",
            content: "fine"
        }];
        100
    ];
    rows[42] = vec![Message {
        role: "user",
        content: "boom",
    }];
    rows[77] = vec![Message {
        role: "user",
        content: "boom",
    }];
    let rows: Conversations = rows.into_iter().collect();
    for threads in [1, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let err = pool.install(|| tok.render(&rows, true)).unwrap_err();
        assert!(matches!(err, EngineError::Template(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("rendering the hostile template crashed the template engine on row 42"),
            "{msg}"
        );
        assert!(msg.contains("a test panic"), "{msg}");
    }
    // The engine still works afterwards.
    let fine: Conversations = vec![vec![Message {
        role: "user",
        content: "fine",
    }]]
    .into_iter()
    .collect();
    assert_eq!(tok.render(&fine, true).unwrap(), vec!["ok"]);
}

#[test]
fn limits_are_checked() {
    assert!(matches!(
        TemplateLimits::new(0, 1),
        Err(EngineError::InvalidParameter(_))
    ));
    assert!(matches!(
        TemplateLimits::new(1, 0),
        Err(EngineError::InvalidParameter(_))
    ));
    let tok = ChatTokenizer::new(
        word_tokenizer(),
        Some("ok".into()),
        SpecialTokens::default(),
    )
    .unwrap();
    assert_eq!(tok.template_limits(), TemplateLimits::default());
    let limits = TemplateLimits::new(5, 10).unwrap();
    assert_eq!(
        tok.with_template_limits(limits).unwrap().template_limits(),
        limits
    );
}

/// The sixteen real chat templates (next to the repository, in shared/chat-templates) render a
/// long conversation within a twentieth of the default fuel. Prints what each used
/// (`cargo test -- --nocapture`). Skipped where the folder is absent.
#[test]
fn real_templates_fit_the_default_budget_with_a_wide_margin() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/chat-templates");
    let Ok(meta) = std::fs::read_to_string(dir.join("templates.json")) else {
        eprintln!("skipped: {} not found", dir.display());
        return;
    };
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    let body = "word ".repeat(800); // 4 KB a message
    let mut rendered = 0;
    for entry in meta.as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let source = std::fs::read_to_string(dir.join(entry["file"].as_str().unwrap())).unwrap();
        let template = ChatTemplate::new(&source).unwrap();
        // 64 alternating turns, ending on a user turn; with and without a system message
        // (some templates refuse one, others require alternation from the first turn).
        let mut best: Option<(u64, usize)> = None;
        for system in [false, true] {
            let mut msgs = Vec::new();
            if system {
                msgs.push(context! { role => "system", content => body.as_str() });
            }
            for i in 0..65 {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                msgs.push(context! { role => role, content => body.as_str() });
            }
            let ctx = context! {
                messages => msgs,
                add_generation_prompt => true,
                bos_token => "<s>",
                eos_token => "</s>",
                tools => super::template::py_none(),
                documents => super::template::py_none(),
            };
            if let Ok((text, used)) = template.render_measured(ctx, 0) {
                best = Some(best.map_or((used, text.len()), |b| b.max((used, text.len()))));
            }
        }
        match best {
            Some((used, bytes)) => {
                eprintln!("{name:20} {used:>7} fuel for {bytes} bytes");
                assert!(
                    used * 20 < TemplateLimits::DEFAULT_FUEL,
                    "{name}: {used} fuel"
                );
                rendered += 1;
            }
            // hermes3_tool_use refuses any conversation without tools (as transformers does).
            None => eprintln!("{name:20} refuses these conversations"),
        }
    }
    assert!(rendered >= 15, "only {rendered} templates rendered");
}
