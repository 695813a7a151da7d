"""Chat templates are untrusted code (issue 21): each hostile template ends in a one-line typed
error and a non-zero exit within seconds, never a hang, a traceback or an aborted process; the
real templates still render, with a wide margin under the limits.

Each attack is a model folder whose ``tokenizer_config.json`` carries the hostile template, run
through ``mipo build-pairs --plan-only``: in the default tier all of them in one real process
(the CLI's entry point called once per attack, so an abort or a hang anywhere fails the test) and
the headline attack through ``python -m mipo`` itself; with ``-m slow``, every attack in a process
of its own. The engine's own tests (``rust/tokenize/hostile.rs``) cover each attack class in more
variants.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from mipo import engine
from mipo.engine import ChatTokenizer
from mipo.errors import InvalidParameterError, TemplateError, TemplateLimitError

DEFAULT_FUEL = 1_000_000
DEFAULT_MAX_BYTES = 4 << 20

_DAG = "{% set a0 = 'aaaaaaaaaaaaaaaa' %}" + "".join(
    f"{{% set a{i} = [a{i - 1}, a{i - 1}] %}}" for i in range(1, 41)
)

# name -> (template, fragment of the one-line error)
ATTACKS: dict[str, tuple[str, str]] = {
    "huge_loop": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
        "ran out of fuel on row 0",
    ),
    "list_doubling": (
        "{% set ns = namespace(x=[1]) %}{% for i in range(100) %}"
        "{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x | length }}",
        "ran out of fuel on row 0",
    ),
    "string_doubling": (
        "{% set ns = namespace(s='a') %}{% for i in range(100) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "ran out of fuel on row 0",
    ),
    "string_repetition": ("{{ 'a' * 10**12 }}", "ran out of fuel on row 0"),
    "repetition_in_a_loop": (
        "{% for i in range(100000) %}{{ 'abc' * 1000000 }}{% endfor %}",
        "built more than 4194304 bytes on row 0 (the rendered prompt)",
    ),
    "shared_structure": (_DAG + "{{ ('' ~ a40) | length }}", "ran out of fuel on row 0"),
    "deep_nesting": (
        "{% set ns = namespace(x=[]) %}{% for i in range(300) %}"
        "{% set ns.x = [[[[[[[[[[ns.x]]]]]]]]]] %}{% endfor %}{{ ns.x }}",
        "nested deeper than 256 levels",
    ),
    "huge_range": ("{{ range(10**12) | list | length }}", "range has too many elements"),
    "recursion": (
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "recursion limit exceeded",
    ),
    "tojson_indent": ("{{ messages | tojson(indent=10**12) }}", "tojson with indent"),
    "format_width": ("{{ '{:>999999999999}'.format(1) }}", "str.format"),
    "include": ("{% include '/etc/passwd' %}", "template not found"),
    "import": ("{% import '/etc/passwd' as p %}{{ p }}", "template not found"),
    "python_attributes": (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "rendering the chat template of",
    ),
    "syntax_error": ("{% for x in %}", "does not compile"),
    "raise_exception": (
        "{{ raise_exception('no thanks') }}",
        "raised an error on row 0: no thanks",
    ),
}


def _hostile_model(root: Path, base: Path, name: str, template: str) -> Path:
    """A copy of the tiny model whose tokenizer_config.json carries ``template``."""
    model = root / name
    shutil.copytree(base, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    return model


def _corpus(path: Path, n: int = 8) -> Path:
    rows = [{"id": f"p{i}", "user_id": f"u{i % 4}", "question": f"Question {i}?"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _args(corpus: Path, out: Path, model: Path) -> list[str]:
    return [
        "build-pairs", str(corpus), "-o", str(out), "--model", str(model), "--plan-only",
        "--generation-backend", "hf", "--generation-max-new-tokens", "4", "--no-progress",
    ]  # fmt: skip


_DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys, time
    from mipo.cli import main
    import mipo.pairs.build  # the stage's imports, so that the timings are the attacks'

    results = {}
    for name, args in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(args)
                code = 0
            except SystemExit as e:
                code = e.code
        results[name] = [code, err.getvalue(), time.perf_counter() - start]
    print(json.dumps(results))
    """
)


def test_every_attack_ends_in_one_line_in_one_real_process(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    runs = {
        name: _args(
            corpus,
            tmp_path / f"out-{name}",
            _hostile_model(tmp_path, tiny_model_dir, name, template),
        )
        for name, (template, _) in ATTACKS.items()
    }
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # An abort (Rust allocation failure, stack overflow) or a crash kills the whole process.
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, fragment) in ATTACKS.items():
        code, stderr, seconds = results[name]
        lines = stderr.strip().splitlines()
        assert code == 2, (name, code, stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, stderr)
        assert fragment in lines[0], (name, lines[0])
        assert "Traceback" not in stderr and "panicked" not in stderr, (name, stderr)
        assert seconds < 5, (name, seconds)
        assert not (tmp_path / f"out-{name}").exists(), name


def test_list_doubling_through_python_m_mipo(tmp_path: Path, tiny_model_dir: Path) -> None:
    # The abort: exit 134 and a Rust allocation failure, before the limits.
    template, fragment = ATTACKS["list_doubling"]
    model = _hostile_model(tmp_path, tiny_model_dir, "doubling", template)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mipo", *_args(_corpus(tmp_path / "c.jsonl"), out, model)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: the chat template of ") and fragment in lines[0]
    assert "MIPO_TEMPLATE_FUEL=" in lines[0] and str(model) in lines[0]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_attack_in_its_own_process(tmp_path: Path, tiny_model_dir: Path, name: str) -> None:
    import time

    template, fragment = ATTACKS[name]
    model = _hostile_model(tmp_path, tiny_model_dir, name, template)
    out = tmp_path / "out"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mipo", *_args(_corpus(tmp_path / "c.jsonl"), out, model)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 10, seconds


# --- the limits through the Python facade ------------------------------------------------------


def _messages(n: int = 3) -> pl.Series:
    return pl.Series([[{"role": "user", "content": f"hello {i}"}] for i in range(n)])


def test_limits_default_and_come_from_the_environment(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(engine.TEMPLATE_FUEL_ENV, raising=False)
    monkeypatch.delenv(engine.TEMPLATE_MAX_BYTES_ENV, raising=False)
    assert ChatTokenizer.from_pretrained(tiny_model_dir).template_limits == (
        DEFAULT_FUEL,
        DEFAULT_MAX_BYTES,
    )
    monkeypatch.setenv("MIPO_TEMPLATE_FUEL", "2_000_000")
    monkeypatch.setenv("MIPO_TEMPLATE_MAX_BYTES", "1000")
    tok = ChatTokenizer.from_pretrained(tiny_model_dir)
    assert tok.template_limits == (2_000_000, 1000)
    assert ChatTokenizer.from_pretrained(tiny_model_dir, template_fuel=7).template_limits == (
        7,
        1000,
    )
    long = pl.Series([[{"role": "user", "content": "x" * 2000}]])
    with pytest.raises(TemplateLimitError, match=r"row 0 \(the rendered prompt\).*BYTES=4000"):
        tok.render(long)


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e6", "²"])
def test_bad_limits_are_refused_naming_the_variable(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MIPO_TEMPLATE_FUEL", value)
    with pytest.raises(InvalidParameterError, match="MIPO_TEMPLATE_FUEL"):
        ChatTokenizer.from_pretrained(tiny_model_dir)
    monkeypatch.delenv("MIPO_TEMPLATE_FUEL")
    with pytest.raises(InvalidParameterError, match="at least 1"):
        ChatTokenizer.from_pretrained(tiny_model_dir, template_max_bytes=0)


def test_limit_errors_are_template_errors_naming_the_row(tiny_model_dir: Path) -> None:
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    tok = ChatTokenizer.from_pretrained(tiny_model_dir, loop, template_fuel=10_000)
    with pytest.raises(TemplateLimitError) as info:
        tok.encode_chat(_messages())
    assert isinstance(info.value, TemplateError)
    message = str(info.value)
    assert "the chat template passed explicitly ran out of fuel on row 0" in message
    assert "10000 fuel" in message and "MIPO_TEMPLATE_FUEL=100000" in message


# --- the real templates under the limits --------------------------------------------------------

SHARED_TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "chat-templates"


@pytest.mark.skipif(
    not (SHARED_TEMPLATES / "templates.json").is_file(),
    reason=f"the shared real-world chat templates are not in {SHARED_TEMPLATES}",
)
def test_real_templates_render_long_conversations_on_a_twentieth_of_the_fuel(
    tiny_model_dir: Path,
) -> None:
    # 64 turns of 4 KB after an optional system message (some templates refuse one); the
    # templates that refuse a conversation refuse it the same way with either budget.
    body = "word " * 800
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": body} for i in range(65)]
    conversations = pl.Series(
        [turns, [{"role": "system", "content": "Be brief."}, *turns]],
        dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
    )
    rendered = 0
    for meta in json.loads((SHARED_TEMPLATES / "templates.json").read_text("utf-8")):
        source = (SHARED_TEMPLATES / meta["file"]).read_text("utf-8")
        full = ChatTokenizer.from_pretrained(tiny_model_dir, source)
        lean = ChatTokenizer.from_pretrained(
            tiny_model_dir,
            source,
            template_fuel=DEFAULT_FUEL // 20,
            template_max_bytes=DEFAULT_MAX_BYTES // 8,
        )
        for i in range(len(conversations)):
            one = conversations[i : i + 1]
            try:
                expected = full.render(one).to_list()
            except TemplateError as e:
                assert not isinstance(e, TemplateLimitError), (meta["name"], e)
                with pytest.raises(TemplateError, match=r"raised an error|failed on row"):
                    lean.render(one)
                continue
            assert lean.render(one).to_list() == expected, meta["name"]
            assert len(expected[0]) > 64 * 4000
            rendered += 1
    assert rendered >= 15
