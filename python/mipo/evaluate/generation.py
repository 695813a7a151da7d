"""Generate evaluation responses with mipo's generation backends (hf or vLLM).

Both compared models answer the same prompts with the same per-row seeds, so differences in the
metrics come from the models, not from sampling luck. A LoRA adapter is merged into a plain model
folder first (the backends load full models).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from mipo.errors import ModelError
from mipo.generate.config import GenerationConfig

__all__ = ["generate_responses", "materialize_model", "render_prompts"]


def materialize_model(spec: str, workdir: Path, *, trust_remote_code: bool = False) -> Any:
    """A :class:`~mipo.models.ResolvedModel` for ``spec``; adapters are merged into ``workdir``.

    >>> # needs a train output folder: see tests/test_evaluate.py
    >>> materialize_model("runs/train1", Path("/tmp/work"))  # doctest: +SKIP
    """
    from mipo.models import merge_adapter, resolve_model, resolve_model_path

    path = resolve_model_path(spec, trust_remote_code=trust_remote_code)
    if (path / "adapter_config.json").exists():
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        path = merge_adapter(
            path, workdir / f"merged-{digest}", trust_remote_code=trust_remote_code
        )
    return resolve_model(str(path), trust_remote_code=trust_remote_code)


def render_prompts(
    resolved: Any, prompts: list[list[dict[str, str]]]
) -> tuple[list[list[int]], int]:
    """The token ids of each chat prompt (with the assistant turn opened) and the model's context
    length as its tokenizer states it (0 when it states none).

    >>> # needs a resolved model (its tokenizer): see tests/test_evaluate.py
    >>> ids, context = render_prompts(resolved, [[{"role": "user", "content": "Hi"}]])  # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolved.path, trust_remote_code=resolved.trust_remote_code
    )
    if tokenizer.chat_template is None:
        raise ModelError(f"model {resolved.name} has no chat template; evaluate an instruct model")
    input_ids = []
    for messages in prompts:
        out: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        input_ids.append(list(out["input_ids"]))
    # Tokenizers without a stated limit report a huge sentinel (int(1e30)).
    context = tokenizer.model_max_length if tokenizer.model_max_length < 10**9 else 0
    return input_ids, int(context)


def generate_responses(
    resolved: Any,
    prompts: list[list[dict[str, str]]] | list[list[int]],
    config: GenerationConfig,
    *,
    progress: str | None = None,
) -> list[Any]:
    """One :class:`~mipo.generate.GenerationResult` per prompt (chat messages, or token ids from
    :func:`render_prompts`), generated as ``config`` says; seeds derive from the row index and
    ``config.seed``, so two models get the same seeds. ``progress``: show the generation's progress
    (:mod:`mipo.progress`) under this name.

    >>> # loads and runs a model: see tests/test_evaluate.py
    >>> generate_responses(resolved, [[{"role": "user", "content": "Hi"}]],
    ...     GenerationConfig(max_new_tokens=16, batch_size=8))  # doctest: +SKIP
    """
    from mipo.generate import create_backend, request_seeds
    from mipo.progress import track

    if not prompts:
        return []
    if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts):
        input_ids: list[list[int]] = [list(p) for p in prompts]  # type: ignore[arg-type]
    else:
        input_ids = render_prompts(resolved, prompts)[0]  # type: ignore[arg-type]
    seed = config.seed
    config = replace(config, trust_remote_code=resolved.trust_remote_code)
    engine = create_backend(resolved, config)
    try:
        with track(
            progress or "",
            total=len(input_ids),
            unit="response",
            tokens_label="new tok",
            enabled=bool(progress),
        ) as task:
            return engine.generate(
                input_ids, request_seeds(range(len(prompts)), seed), on_batch=task.advance
            )
    finally:
        del engine
