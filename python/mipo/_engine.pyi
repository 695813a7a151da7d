# Hand-written stub of the native module (rust/py/). Checked by `make lint` (mypy stubtest).
from typing import Any, final

__version__: str

def engine_info() -> dict[str, Any]: ...

# --- dedup (rust/py/dedup.rs) ---------------------------------------------------------------------

def normalize(texts: Any) -> Any:
    """NFKC + case folding + whitespace collapsing; returns an Arrow large_string array."""

def dedup(
    texts: Any,
    ngram: int = 5,
    num_perm: int = 112,
    bands: int = 14,
    threshold: float = 0.8,
    seed: int | None = None,
    near: bool = True,
) -> tuple[Any, Any, Any]:
    """(keep: bool, cluster: uint32, exact: bool) Arrow arrays, one row per input row."""

@final
class Deduper:
    def __new__(
        cls,
        ngram: int = 5,
        num_perm: int = 112,
        bands: int = 14,
        threshold: float = 0.8,
        seed: int | None = None,
        near: bool = True,
    ) -> Deduper: ...
    def add(self, texts: Any) -> tuple[Any, Any, Any]: ...
    @property
    def rows_seen(self) -> int: ...
    @property
    def clusters(self) -> int: ...
    @property
    def distinct_texts(self) -> int: ...
    @property
    def state_bytes(self) -> int: ...
    def __len__(self) -> int: ...

# --- derange (rust/py/derange.rs) ---
# Arrays come back as arro3 Arrays (they export __arrow_c_array__); mipo.engine wraps them in
# Polars Series.
def derangement(n: int, seed: int) -> Any: ...
def constrained_derangement(
    n: int, groups: Any | None, clusters: Any | None, seed: int, sweeps: int
) -> Any: ...
def stratified_derangement(
    strata: Any,
    groups: Any | None,
    clusters: Any | None,
    seed: int,
    sweeps: int,
    strict: bool,
) -> Any: ...
def _rng_u64(seed: int, count: int, stream: int | None = None) -> Any: ...
def _rng_below(seed: int, bound: int, count: int) -> Any: ...

# --- tokenize (rust/py/tokenize.rs) ---------------------------------------------------------------

@final
class ChatTokenizer:
    """A model's tokenizer and chat template; renders and encodes Arrow columns in parallel."""

    @staticmethod
    def from_dir(
        path: str,
        chat_template: str | None = None,
        pretoken_cache: bool = True,
        template_fuel: int | None = None,
        template_max_bytes: int | None = None,
    ) -> ChatTokenizer: ...
    @property
    def pretoken_cache(self) -> bool: ...
    @property
    def template_limits(self) -> tuple[int, int]:
        """``(fuel, max_bytes)`` of one render."""
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

# --- plan steps for a cluster (rust/py/ray.rs) ----------------------------------------------------

def sketch_rows(
    texts: Any, ngram: int = 5, num_perm: int = 112, bands: int = 14, seed: int = 0
) -> tuple[Any, Any, Any, Any]:
    """(exact_hi: u64, exact_lo: u64, band_keys: u32 rows x bands, fingerprints: list<u32>)."""

def bucket_pairs(keys: Any, rows: Any) -> tuple[Any, Any]: ...
def verify_pairs(a: Any, b: Any, threshold: float) -> Any: ...
def resolve_representatives(s: Any, r: Any) -> tuple[Any, Any]: ...
