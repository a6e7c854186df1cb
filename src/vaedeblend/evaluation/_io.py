"""Atomic file writes and JSON conversion for the evaluation reports."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np


def to_jsonable(obj):
    """Recursively convert numpy scalars/arrays to Python; NaN and inf become None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def _tmp_in(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = _tmp_in(path, ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Strict JSON (NaN -> null), indented, written atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, sort_keys=False)
    write_text_atomic(path, text + "\n")


def savez_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to a temporary file, then rename (``path`` should end in .npz)."""
    path = Path(path)
    tmp = _tmp_in(path, ".npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def savefig_atomic(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib Figure as PNG atomically."""
    path = Path(path)
    tmp = _tmp_in(path, ".png")
    try:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
