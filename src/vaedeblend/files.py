"""Putting a finished file in place: :func:`publish`."""

from __future__ import annotations

import os
from pathlib import Path


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the complete temporary file ``tmp`` over ``path``, first giving it the
    permissions any new file gets under this process's umask. safetensors creates its files
    readable by their owner only (0600), so a model or prior saved to a shared folder would
    otherwise be unreadable by the rest of the group."""
    umask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, Path(path))
