# Hand-written stub of the native module (rust/py/). Checked by `make lint` (mypy stubtest).
from typing import Any

__version__: str

def engine_info() -> dict[str, Any]: ...

# --- tokenize (rust/py/tokenize.rs) ---------------------------------------------------------------

class ChatTokenizer:
    """A model's tokenizer and chat template; renders and encodes Arrow columns in parallel."""

    @staticmethod
    def from_dir(path: str, chat_template: str | None = None) -> ChatTokenizer: ...
    @property
    def chat_template(self) -> str | None: ...
    @property
    def bos_token(self) -> str | None: ...
    @property
    def eos_token(self) -> str | None: ...
    @property
    def pad_token(self) -> str | None: ...
    @property
    def vocab_size(self) -> int: ...
    def render(self, messages: Any, add_generation_prompt: bool) -> Any:
        """``list<struct<role, content>>`` column -> Arrow string array of prompts."""
    def encode_chat(self, messages: Any, add_generation_prompt: bool) -> tuple[Any, Any]:
        """Render + encode -> (Arrow ``list<uint32>`` ids, Arrow ``uint32`` lengths)."""
    def encode(self, texts: Any, add_special_tokens: bool) -> tuple[Any, Any]:
        """Arrow string column -> (Arrow ``list<uint32>`` ids, Arrow ``uint32`` lengths)."""
