"""A tiny, randomly initialised Llama-style chat model built locally (for tests and examples).

Nothing is downloaded: a byte-level BPE tokenizer is trained on the fly on a small built-in text,
given a ChatML template (the same shape as SmolLM2's), and paired with a 2-layer Llama of width
32. Deterministic for a given seed. It writes a normal Hugging Face model folder (safetensors,
``tokenizer.json``, ``tokenizer_config.json`` with the chat template, ``generation_config.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TRAINING_TEXT = """\
I am a vegetarian runner training for a marathon. What should I eat before a long run?
As a beginner programmer who likes Python, how do I read a CSV file?
I live in a small apartment with two cats. Which plants are safe for them?
I am a nurse working night shifts. How can I sleep better during the day?
My budget is tight and I cook for four. Suggest a cheap weekly dinner plan.
You are a helpful assistant. Answer briefly and clearly, with examples when useful.
Sure! Here is a short answer with three steps: first, second, and third.
Café, naïve, résumé — unicode words 日本語 テスト 😀 appear too.
"""


def build_tiny_model(path: str | Path, *, seed: int = 0, vocab_size: int = 400) -> Path:
    """Write a tiny chat model to ``path`` and return it. Takes about a second."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=512,
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_requests(
    model_dir: str | Path,
    n: int,
    *,
    words: list[str],
    seed: int = 0,
    max_words: int = 40,
    first_id: int = 1000,
) -> Any:
    """Generation requests: ``n`` chat prompts of 1..``max_words - 1`` random ``words``, rendered
    and tokenized with the model's own template (so the hf backend's bucketing reorders rows)."""
    import random

    import polars as pl
    from transformers import AutoTokenizer

    from mipo.generate import request_seeds
    from mipo.generate.executors import REQUEST_SCHEMA

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        picked = [rng.choice(words) for _ in range(rng.randrange(1, max_words))]
        messages = [{"role": "user", "content": " ".join(picked) + "?"}]
        rows.append(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    ids = list(range(first_id, first_id + n))
    return pl.DataFrame(
        {"request_id": ids, "input_ids": rows, "seed": request_seeds(ids, seed)},
        schema=REQUEST_SCHEMA,
    )
