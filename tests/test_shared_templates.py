"""Real-world chat templates rendered by the engine and by transformers, token for token.

The sixteen templates in ``shared/chat-templates`` (next to the repository; ``SOURCES.md`` there
says where each came from) are published with public models. For every template and every
conversation below, the engine's ``encode_chat`` must give exactly the ids of transformers'
``apply_chat_template(..., tokenize=True)``, or both must refuse the conversation (transformers
raises, the engine raises :class:`~mipo.errors.TemplateError`; when the template itself calls
``raise_exception``, with the same message). Which cases the reference refuses is pinned in
``REFUSED`` so that no case accepts either outcome.

Each template gets its own model folder: a real byte-level BPE ``tokenizer.json`` (the built-in
SmolLM2's when it has been converted, else one trained on the fly) with the template's bos/eos
and control tokens from ``templates.json`` registered as special tokens, and a
``tokenizer_config.json`` holding the template and bos/eos, so both sides see the same inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mipo.engine import ChatTokenizer
from mipo.errors import TemplateError

SHARED_TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "chat-templates"

if not (SHARED_TEMPLATES / "templates.json").is_file():
    pytest.skip(
        f"the shared real-world chat templates are not available ({SHARED_TEMPLATES} holds no "
        "templates.json); they live next to the repository, in shared/chat-templates",
        allow_module_level=True,
    )

META: dict[str, dict[str, Any]] = {
    t["name"]: t for t in json.loads((SHARED_TEMPLATES / "templates.json").read_text("utf-8"))
}

Conversation = list[dict[str, str]]

CONVERSATIONS: dict[str, Conversation] = {
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What should I eat before a long run?"},
    ],
    "user_only": [{"role": "user", "content": "Hi"}],
    "multi_turn": [
        {"role": "user", "content": "How do I read a CSV file?"},
        {"role": "assistant", "content": "Use pandas.read_csv(path)."},
        {"role": "user", "content": "  And without pandas?  "},
    ],
    "unicode": [
        {
            "role": "user",
            "content": "  👩\u200d👩\u200d👧 🇯🇵 😀 emoji; café naïve résumé, e\u0301 n\u0303 "
            "(combining); 你好，世界 テスト 한국어 \u00a0\n",
        },
        {
            "role": "assistant",
            "content": "مرحبا بالعالم (Arabic), שלום עולם (Hebrew), \u200fRTL mark; Ça va ? «ß» ﬁ",
        },
        {"role": "user", "content": "zero\u200bwidth, ½ ² Ⅻ, tab\tend\u3000"},
    ],
    # Messages carry only role and content (the engine's input), so the tool turn follows an
    # assistant turn in plain text rather than one with tool_calls.
    "tool_result": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "Let me look that up."},
        {"role": "tool", "content": '{"temperature_c": 21, "condition": "sunny"}'},
    ],
    # Roles out of order: user twice in a row.
    "user_user": [
        {"role": "user", "content": "First question."},
        {"role": "user", "content": "Second question."},
    ],
    # Roles out of order: assistant twice in a row.
    "assistant_assistant": [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi."},
        {"role": "assistant", "content": "Anyone there?"},
    ],
}

COMMON = ("system_user", "user_only", "multi_turn", "unicode")

# Templates that name a tool role (or take tools) get the tool-result conversation.
TOOL_TEMPLATES = {
    "llama31",
    "llama32",
    "qwen25",
    "qwen3",
    "mistral_nemo",
    "deepseek_r1_distill",
    "granite33",
    "smollm3",
    "hermes3_tool_use",
}

# Templates that raise_exception on a conversation made only of role/content strings, and the
# conversation that must be rejected. The others never raise on such input (hermes3_tool_use
# refuses every conversation anyway, see REFUSED).
REJECTS: dict[str, tuple[str, ...]] = {
    "llama2": ("user_user",),
    "mixtral": ("assistant_assistant",),
    "gemma2": ("assistant_assistant",),
    "gemma3": ("user_user",),
    "mistral_nemo": ("user_user",),
    "command_r": ("user_user",),
}

# The cases transformers refuses, with the reason; every other case it renders.
REFUSED: dict[tuple[str, str], str] = {
    ("llama2", "user_user"): "Conversation roles must alternate",
    ("mixtral", "system_user"): "Conversation roles must alternate",
    ("mixtral", "assistant_assistant"): "Conversation roles must alternate",
    ("gemma2", "system_user"): "System role not supported",
    ("gemma2", "assistant_assistant"): "Conversation roles must alternate",
    ("gemma3", "user_user"): "Conversation roles must alternate",
    ("mistral_nemo", "user_user"): "conversation roles must alternate",
    ("mistral_nemo", "tool_result"): "Tool call IDs should be alphanumeric strings with length 9!",
    ("command_r", "user_user"): "Conversation roles must alternate",
    # `{% for tool in tools %}` with no tools: jinja2 cannot iterate None.
    **{
        ("hermes3_tool_use", conv): "'NoneType' object is not iterable"
        for conv in (*COMMON, "tool_result")
    },
}


def _conversations_for(name: str) -> list[str]:
    convs = list(COMMON)
    if name in TOOL_TEMPLATES:
        convs.append("tool_result")
    convs.extend(REJECTS.get(name, ()))
    return convs


CASES = [
    pytest.param(name, conv, agp, id=f"{name}-{conv}-{'gen' if agp else 'nogen'}")
    for name in META
    for conv in _conversations_for(name)
    for agp in (True, False)
]


# --- model folders -----------------------------------------------------------------------------

_TRAINING_TEXT = """\
I am a vegetarian runner training for a marathon. What should I eat before a long run?
As a beginner programmer who likes Python, how do I read a CSV file? Use pandas.read_csv.
You are a helpful assistant. Answer briefly and clearly, with examples when useful.
Cutting Knowledge Date: December 2023. Today Date: 26 Jul 2024. Knowledge Cutoff Date.
Café, naïve, résumé — unicode words 你好 世界 日本語 テスト 😀 مرحبا שלום appear too.
"""


def _base_tokenizer() -> Any:
    """A real byte-level BPE: the built-in SmolLM2's tokenizer.json, or one trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mipo.models import BUILTIN_CACHE_NAME, cache_root

    converted = cache_root() / BUILTIN_CACHE_NAME / "tokenizer.json"
    if converted.is_file():
        return Tokenizer.from_file(str(converted))
    tk = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    return tk


def _write_model(
    path: Path,
    template: str,
    bos: str | None,
    eos: str | None,
    specials: list[str],
    special_tokens_map: dict[str, str] | None = None,
) -> Path:
    """tokenizer.json (with ``specials`` registered as special tokens) + tokenizer_config.json."""
    from tokenizers import AddedToken

    tk = _base_tokenizer()
    tokens = list(dict.fromkeys(t for t in (bos, eos, *specials) if t))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    path.mkdir(parents=True, exist_ok=True)
    tk.save(str(path / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": template,
    }
    if bos is not None:
        config["bos_token"] = bos
    if eos is not None:
        config["eos_token"] = eos
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if special_tokens_map is not None:
        (path / "special_tokens_map.json").write_text(
            json.dumps(special_tokens_map), encoding="utf-8"
        )
    return path


@dataclass
class Model:
    name: str
    path: Path
    hf: Any
    native: ChatTokenizer


def _build_model(path: Path, name: str) -> Model:
    """The folder for template ``name``, loaded by transformers and by the engine."""
    from transformers import AutoTokenizer

    meta = META[name]
    template = (SHARED_TEMPLATES / meta["file"]).read_text(encoding="utf-8")
    _write_model(path, template, meta["bos_token"], meta["eos_token"], meta["special_tokens"])
    hf = AutoTokenizer.from_pretrained(str(path))
    assert (hf.bos_token, hf.eos_token) == (meta["bos_token"], meta["eos_token"])
    assert hf.chat_template == template
    native = ChatTokenizer.from_pretrained(path)
    assert native.chat_template == template
    assert native.vocab_size == len(hf)
    return Model(name, path, hf, native)


@pytest.fixture(scope="module")
def model_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Model]:
    """One model folder per template, built on first use and shared by its cases."""
    built: dict[str, Model] = {}

    def get(name: str) -> Model:
        if name not in built:
            built[name] = _build_model(tmp_path_factory.mktemp(name), name)
        return built[name]

    return get


# --- comparing ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    ids: list[int] | None = None
    text: str | None = None
    error: BaseException | None = None


def _reference(hf: Any, conv: Conversation, agp: bool) -> Outcome:
    try:
        ids = hf.apply_chat_template(
            conv, tokenize=True, add_generation_prompt=agp, return_dict=False
        )
        text = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
    except Exception as exc:  # jinja2's TemplateError from raise_exception, TypeError, ...
        return Outcome(error=exc)
    return Outcome(ids=list(ids), text=text)


def _engine(native: ChatTokenizer, conv: Conversation, agp: bool) -> Outcome:
    series = pl.Series("messages", [conv])
    try:
        ids = native.encode_chat(series, add_generation_prompt=agp)["input_ids"][0].to_list()
        text = native.render(series, add_generation_prompt=agp)[0]
    except TemplateError as exc:
        return Outcome(error=exc)
    return Outcome(ids=ids, text=text)


def _difference(hf: Any, expected: Outcome, got: Outcome) -> str:
    """Where the engine's ids (and text) first differ from transformers', decoded on each side."""
    assert expected.ids is not None and got.ids is not None
    assert expected.text is not None and got.text is not None
    a, b = expected.ids, got.ids
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, k - 6)
    lines = [
        f"first differing token at {k} (transformers {len(a)} tokens, engine {len(b)})",
        f"  transformers {a[lo : k + 6]} = {hf.decode(a[lo : k + 6])!r}",
        f"  engine       {b[lo : k + 6]} = {hf.decode(b[lo : k + 6])!r}",
    ]
    t, e = expected.text, got.text
    c = next((i for i, (x, y) in enumerate(zip(t, e, strict=False)) if x != y), min(len(t), len(e)))
    lines += [
        f"first differing character at {c} (transformers {len(t)} chars, engine {len(e)})",
        f"  transformers {t[max(0, c - 40) : c + 40]!r}",
        f"  engine       {e[max(0, c - 40) : c + 40]!r}",
    ]
    return "\n".join(lines)


def assert_same_outcome(hf: Any, expected: Outcome, got: Outcome, refused: str | None) -> None:
    """Same ids, or both refuse; ``refused`` pins what transformers does (None: it renders)."""
    if refused is None:
        assert expected.error is None, (
            f"transformers should render this case but raised {expected.error!r}"
        )
        assert got.error is None, (
            f"transformers renders this case but the engine refused it: {got.error}\n"
            f"transformers renders {expected.text!r}"
        )
        assert got.ids == expected.ids, _difference(hf, expected, got)
        return
    assert expected.error is not None, (
        f"transformers should refuse this case ({refused}) but rendered {expected.text!r}"
    )
    assert refused in str(expected.error), f"transformers refused it otherwise: {expected.error!r}"
    assert got.error is not None, (
        f"transformers refuses this case ({type(expected.error).__name__}: {expected.error}) "
        f"but the engine rendered {got.text!r}"
    )
    from jinja2.exceptions import TemplateError as Jinja2TemplateError

    if isinstance(expected.error, Jinja2TemplateError):  # the template's raise_exception
        assert str(expected.error) in str(got.error), (
            f"both refuse, but transformers says {expected.error!r} and the engine {got.error!r}"
        )


# --- the cases ---------------------------------------------------------------------------------


def test_every_template_is_covered() -> None:
    files = {p.name for p in SHARED_TEMPLATES.glob("*.jinja")}
    assert files == {m["file"] for m in META.values()}
    assert len(META) == 16
    covered = {(name, conv) for name, conv, _ in (c.values for c in CASES)}
    assert set(REFUSED) <= covered


@pytest.mark.parametrize(("name", "conv", "agp"), CASES)
def test_matches_transformers(
    model_for: Callable[[str], Model], name: str, conv: str, agp: bool
) -> None:
    model = model_for(name)
    messages = CONVERSATIONS[conv]
    expected = _reference(model.hf, messages, agp)
    got = _engine(model.native, messages, agp)
    assert_same_outcome(model.hf, expected, got, REFUSED.get((name, conv)))


# special_tokens_map.json: transformers (legacy path, taken when tokenizer_config.json has no
# added_tokens_decoder) lets it override the bos/eos of tokenizer_config.json, and the template
# sees the overriding values.
SPECIAL_TOKENS_MAP_CASES = [
    pytest.param(name, conv, id=f"{name}-{conv}")
    for name, conv in (("mixtral", "multi_turn"), ("zephyr", "system_user"))
]


@pytest.mark.parametrize(("name", "conv"), SPECIAL_TOKENS_MAP_CASES)
def test_special_tokens_map_overrides_config(tmp_path: Path, name: str, conv: str) -> None:
    from transformers import AutoTokenizer

    meta = META[name]
    bos, eos = "<|map_bos|>", "<|map_eos|>"
    path = _write_model(
        tmp_path / name,
        (SHARED_TEMPLATES / meta["file"]).read_text(encoding="utf-8"),
        meta["bos_token"],
        meta["eos_token"],
        [*meta["special_tokens"], bos, eos],
        special_tokens_map={"bos_token": bos, "eos_token": eos},
    )
    hf = AutoTokenizer.from_pretrained(str(path))
    assert (hf.bos_token, hf.eos_token) == (bos, eos)
    native = ChatTokenizer.from_pretrained(path)
    messages = CONVERSATIONS[conv]
    expected = _reference(hf, messages, True)
    got = _engine(native, messages, True)
    assert_same_outcome(hf, expected, got, None)
    assert (native.bos_token, native.eos_token) == (bos, eos)
