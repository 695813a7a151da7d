# Hand-written stub of the native module (rust/py/). Checked by `make lint` (mypy stubtest).
from typing import Any

__version__: str

def engine_info() -> dict[str, Any]: ...
