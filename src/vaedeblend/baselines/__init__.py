"""Deblenders people use today, behind the same :class:`~vaedeblend.models.api.Deblender`
contract as the trained models, for side-by-side tables on the very same blends.

- ``sep`` and ``photutils``: detection + segmentation deblending (:mod:`.segmentation`);
- ``scarlet2``: a fitted scene of positive spectrum x morphology sources (:mod:`.scarlet`);
- ``none``: the blend itself (no deblending).

Optional dependencies are imported on first use; a missing one raises
:class:`MissingDependencyError` naming the extra to install. :func:`run_baseline` writes the
``deblended`` file that ``vaedeblend evaluate --deblended`` reads.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# name -> (class path, the modules it needs)
BASELINES = {
    "sep": ("vaedeblend.baselines.segmentation:SEPDeblender", ("sep",)),
    "photutils": ("vaedeblend.baselines.segmentation:PhotutilsDeblender", ("photutils", "skimage")),
    "scarlet2": ("vaedeblend.baselines.scarlet:Scarlet2Deblender", ("scarlet2", "jax", "sep")),
    "none": ("vaedeblend.baselines:NoDeblending", ()),
}
EXTRA = "baselines"


class MissingDependencyError(ImportError):
    """An optional dependency of a baseline is not installed."""


class NoDeblending:
    """The blend itself as the central galaxy's image (the ``none`` row of every table)."""

    name = "none"

    def __init__(self, band_ids: Sequence[str], **_):
        self.band_ids = list(band_ids)

    def deblend(self, stamps, bands=None, context=None) -> np.ndarray:
        from vaedeblend.models.api import check_stamps

        return check_stamps(stamps).copy()


def make_baseline(name: str, band_ids: Sequence[str], **options):
    """The baseline deblender ``name`` (one of :data:`BASELINES`) for ``band_ids``."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    target, modules = BASELINES[name]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f'baseline {name!r} needs {", ".join(missing)}: pip install "vaedeblend[{EXTRA}]"'
        )
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(band_ids, **options)


def run_baseline(
    name: str,
    data: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    true_centres: bool = False,
    **options,
) -> dict:
    """Run baseline ``name`` on the test set ``data``; write ``out`` (HDF5: ``deblended``
    (N, C, H, W) electrons with the test set's fingerprint and band ids; written atomically).

    ``true_centres``: give the method each stamp's true central position (the truth table's
    target ``x_pixel``, ``y_pixel``) instead of the stamp centre, to pick its central source.
    Returns a summary with the seconds per blend (deblending only, file reading excluded).
    """
    from vaedeblend.argtypes import check_positive
    from vaedeblend.dataset import open_dataset, write_h5
    from vaedeblend.models.api import DeblendContext

    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; give a file name (HDF5)")
    with open_dataset(data) as ds:
        n = len(ds) if limit is None else min(check_positive("limit", limit), len(ds))
        blends = ds.read("blend", slice(0, n))
        context = DeblendContext.from_dataset(ds)
        if true_centres:
            context = _with_true_centres(context, ds, n)
        meta = {"fingerprint": ds.meta["fingerprint"], "band_ids": json.dumps(ds.band_ids)}
    method = make_baseline(name, context.band_ids, **options)
    start = time.perf_counter()
    deblended = method.deblend(blends, context=context)
    seconds = time.perf_counter() - start
    summary = {
        "method": name,
        "n": n,
        "seconds_per_blend": seconds / max(n, 1),
        "true_centres": true_centres,
        **getattr(method, "timings", {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_h5(out, {"deblended": deblended}, {**meta, "summary": json.dumps(summary)})
    return summary


def _with_true_centres(context, ds, n: int):
    truth = ds.truth
    rows = np.asarray(truth["is_target"], dtype=bool)
    index = np.asarray(truth["blend_index"])[rows]
    xy = np.stack([np.asarray(truth["x_pixel"])[rows], np.asarray(truth["y_pixel"])[rows]], 1)
    centres = np.full((n, 2), np.nan)
    keep = index < n
    centres[index[keep]] = xy[keep]
    from dataclasses import replace

    return replace(context, centre_pixels=centres)
