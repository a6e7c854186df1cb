"""Output files, written so that a failed run leaves nothing behind.

Everything is written into a hidden temporary directory inside the output directory and moved
into place with ``os.replace`` only once the whole run has succeeded; on failure the temporary
directory is removed (and the output directory too, if this run created it).

Large images are written without holding them in memory: :func:`create_image_file` writes the
FITS headers and sizes the file, then returns memory maps of each HDU's data (big-endian
float32, as FITS stores it) to be filled in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

FITS_BLOCK = 2880


def _padded(n: int) -> int:
    return -(-n // FITS_BLOCK) * FITS_BLOCK


def _hdu_header(shape: tuple[int, ...], cards: fits.Header | None, primary: bool) -> fits.Header:
    """A float32 image header for data of numpy ``shape`` (C order), with ``cards`` added."""
    placeholder = np.zeros((1,) * len(shape), dtype=np.float32)
    hdu = fits.PrimaryHDU(placeholder) if primary else fits.ImageHDU(placeholder)
    header = hdu.header
    for axis, n in enumerate(reversed(shape)):
        header[f"NAXIS{axis + 1}"] = int(n)
    if cards is not None:
        for card in cards.cards:
            if card.keyword in ("SIMPLE", "BITPIX", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT"):
                continue
            if card.keyword.startswith("NAXIS"):
                continue
            header.append(card, end=True)
    return header


def create_image_file(path: Path, hdus: list[tuple[tuple[int, ...], fits.Header | None]]):
    """Write a FITS file of zero-filled float32 images and return a memory map of each HDU's
    data, shaped as numpy ``shape`` (writable, big-endian)."""
    offsets = []
    with open(path, "wb") as f:
        for i, (shape, cards) in enumerate(hdus):
            header = _hdu_header(shape, cards, primary=(i == 0))
            f.write(header.tostring().encode("ascii"))
            offsets.append(f.tell())
            f.seek(f.tell() + _padded(int(np.prod(shape)) * 4))
        f.truncate(f.tell())  # a sparse file of zeros: FITS pads data with zeros too
    return [
        np.memmap(path, dtype=">f4", mode="r+", offset=off, shape=shape)
        if int(np.prod(shape)) > 0
        else np.zeros(shape, dtype=np.float32)
        for off, (shape, _) in zip(offsets, hdus, strict=True)
    ]


MANIFEST = "vaedeblend_outputs.json"
TMP_PREFIX = ".vaedeblend-tmp-"


class OutputDir:
    """A temporary directory inside ``out`` whose files move into ``out`` on :meth:`commit`.

    Use as a context manager: an exception removes the temporary files (and ``out`` itself
    when this run created it and it is empty).

    The rule for an existing ``out`` (docs/field_mode.md): a folder that holds the outputs of an
    earlier run (listed in its ``vaedeblend_outputs.json``) is refused unless ``overwrite``;
    with ``overwrite`` the earlier run's outputs that this run does not write again are removed
    at commit, so no stale file stays mixed in. Files this package did not write are never
    touched. Temporary folders left by killed runs (their process is gone) are removed.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"output {self.out} exists and is not a directory")
        self.created = not self.out.exists()
        self.earlier = _read_manifest(self.out)
        if self.earlier and not overwrite:
            raise FileExistsError(
                f"{self.out} holds the outputs of an earlier run ({', '.join(self.earlier)}); "
                "pass --overwrite (overwrite=True) to replace them, or choose another --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=self.out))
        self.names: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write the output ``name`` now; it is moved to ``out/name`` on commit."""
        if name not in self.names:
            self.names.append(name)
        return self.tmp / name

    def scratch(self, name: str) -> Path:
        """A temporary file that is never moved into ``out``."""
        return self.tmp / name

    def commit(self) -> list[Path]:
        """Move every output into place (each file atomically) and remove the temporary dir."""
        final = []
        for name in self.names:
            os.replace(self.tmp / name, self.out / name)
            final.append(self.out / name)
        for stale in set(self.earlier) - set(self.names):
            (self.out / stale).unlink(missing_ok=True)
        manifest = self.tmp / MANIFEST
        manifest.write_text(json.dumps(sorted(self.names)) + "\n")
        os.replace(manifest, self.out / MANIFEST)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return final

    def abort(self) -> None:
        """Remove the temporary files (and ``out`` if this run created it and it is empty)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created:
            try:
                self.out.rmdir()
            except OSError:
                pass

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _read_manifest(out: Path) -> list[str]:
    """The outputs an earlier run wrote to ``out`` (file names), from its manifest."""
    try:
        names = json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return []
    # names only, never paths: a manifest cannot point outside the folder
    return [n for n in names if isinstance(n, str) and n == Path(n).name and not n.startswith(".")]


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporary folders of runs that were killed: ``.vaedeblend-tmp-PID-*`` whose
    process no longer exists (and those of the older unnamed form)."""
    removed = []
    for tmp in out.glob(f"{TMP_PREFIX}*"):
        pid_text = tmp.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_catalog(table, outdir: OutputDir, stem: str = "catalog") -> None:
    """The catalog as FITS and ECSV, and Parquet when pyarrow is installed."""
    table.write(outdir.path(f"{stem}.fits"), format="fits")
    table.write(outdir.path(f"{stem}.ecsv"), format="ascii.ecsv")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return
    flat = table.copy(copy_data=False)
    flat.meta = {}  # parquet keeps metadata as strings; the FITS and ECSV files hold it
    flat.write(outdir.path(f"{stem}.parquet"), format="parquet")
