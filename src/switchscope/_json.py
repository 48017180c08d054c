"""JSON that is always valid: numpy values made plain, NaN and Inf written as null."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy values made plain and every non-finite float (NaN, Inf) made None, so
    that the JSON written is valid JSON (which has no NaN or Infinity)."""
    import math

    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def write_json(obj: Any, path: Path) -> None:
    """Write JSON to a temporary name, then rename (never a half-written file). Non-finite
    numbers are written as null."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        text = json.dumps(json_safe(obj), indent=2, default=_json_default, allow_nan=False)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
