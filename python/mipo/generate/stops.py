"""Which token ids end a response, read from a model folder's JSON files (no heavy imports).

Chat models end a turn with a template token (``<|im_end|>``, ``<|eot_id|>``, ...) that is not
always the tokenizer's EOS; generation must stop on both, in both backends alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mipo.errors import GenerationError
from mipo.io import read_json_record

# End-of-turn markers of common chat templates; used only when the template mentions them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def stop_token_ids(model_dir: str | Path) -> list[int]:
    """EOS ids of ``generation_config.json`` and ``config.json``, the tokenizer's EOS token, and
    the chat template's end-of-turn token, deduplicated in that order.

    >>> # needs a model folder: see tests/test_models.py
    >>> stop_token_ids("path/to/model")  # doctest: +SKIP
    [2]
    """
    folder = Path(model_dir)
    ids: list[int] = []

    def add(value: Any) -> None:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item not in ids:
                ids.append(item)

    add(_read(folder / "generation_config.json").get("eos_token_id"))
    add(_read(folder / "config.json").get("eos_token_id"))

    vocab = _token_ids(folder / "tokenizer.json")
    tokenizer_config = _read(folder / "tokenizer_config.json")
    eos = tokenizer_config.get("eos_token")
    if isinstance(eos, dict):  # older files store AddedToken dicts
        eos = eos.get("content")
    if isinstance(eos, str) and eos in vocab:
        add(vocab[eos])

    template = tokenizer_config.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if isinstance(template, str):
        for token in END_OF_TURN_TOKENS:
            # Only a token the template closes turns with: <|endoftext|> in a vocab is no sign.
            if token in template and token in vocab:
                add(vocab[token])
    return ids


def _read(path: Path) -> dict[str, Any]:
    """A model folder's JSON file; absent: {}. Corrupt is an error, never {}: the stop tokens
    it holds would be lost silently, and every response would run to max_new_tokens."""
    data = read_json_record(
        path,
        what="model file",
        fix="repair or re-download the model folder (generation reads its stop tokens there)",
        error=GenerationError,
    )
    return data or {}


def _token_ids(tokenizer_json: Path) -> dict[str, int]:
    """Special (added) tokens of a tokenizer.json: content -> id."""
    data = _read(tokenizer_json)
    return {
        token["content"]: token["id"]
        for token in data.get("added_tokens", [])
        if isinstance(token, dict) and "content" in token and "id" in token
    }
