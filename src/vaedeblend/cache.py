"""A disk cache for derived numeric tables (colour tables, catalog radii): what every new
process (each Dask worker) would otherwise recompute for seconds at start-up.

Entries are float64 ``.npy`` files named by the SHA-256 of their key (which must hold
everything that defines the value, inputs' hashes included) and the GalSim version; written
atomically; a cache that cannot be read or written is skipped, never trusted half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import galsim
import numpy as np


def array_digest(*arrays) -> str:
    """SHA-256 of arrays' bytes, dtypes and shapes: a cache key for values derived from them."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_dir() -> Path | None:
    """Where derived tables are cached: ``$VAEDEBLEND_CACHE`` or ``~/.cache/vaedeblend/tables``
    (``VAEDEBLEND_CACHE=off``: no disk cache)."""
    root = os.environ.get("VAEDEBLEND_CACHE")
    if root == "off":
        return None
    return Path(root) if root else Path.home() / ".cache" / "vaedeblend" / "tables"


def disk_cached(key: tuple, compute) -> np.ndarray:
    """``compute()`` (a float64 array), read from or written to the disk cache under a hash of
    ``key`` and the GalSim version. Written atomically (temporary file, then rename); a cache
    that cannot be read or written is skipped, never trusted half-written."""
    text = json.dumps([*key, galsim.__version__], sort_keys=True)
    folder = cache_dir()
    path = None if folder is None else folder / (hashlib.sha256(text.encode()).hexdigest() + ".npy")
    if path is not None and path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass
    value = np.asarray(compute(), dtype=np.float64)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, value, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass
    return value
