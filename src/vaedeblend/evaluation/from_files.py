"""Evaluate from files: a test set written by ``vaedeblend simulate`` and a deblender's outputs.

Another deblender's outputs come as an HDF5 file with a dataset ``deblended`` (N, C, H, W),
electrons, in the test set's order, and the test set's fingerprint in its attributes (attribute
``fingerprint``, or a JSON attribute ``meta`` with a ``fingerprint`` key). Optional attribute
``band_ids`` (JSON list or array of strings) is checked against the test set's channel order.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py
import numpy as np

from vaedeblend.argtypes import check_positive
from vaedeblend.evaluation._io import savez_atomic
from vaedeblend.evaluation.report import EvalConfig, evaluate_data, make_eval_data


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def deblended_fingerprint(attrs) -> str | None:
    """Fingerprint stored in HDF5 attributes: ``fingerprint``, else ``meta`` JSON's key."""
    if "fingerprint" in attrs:
        return _attr_str(attrs["fingerprint"])
    if "meta" in attrs:
        return json.loads(_attr_str(attrs["meta"])).get("fingerprint")
    return None


def _band_ids_attr(attrs) -> list[str] | None:
    if "band_ids" in attrs:
        v = attrs["band_ids"]
        return json.loads(v) if isinstance(v, str | bytes) else [_attr_str(b) for b in v]
    if "meta" in attrs:
        return json.loads(_attr_str(attrs["meta"])).get("band_ids")
    return None


def load_deblended(
    path: str | Path,
    n_expected: int,
    fingerprint_expected: str | None,
    band_ids_expected: list[str] | None = None,
    check_fingerprint: bool = True,
    n_first: int | None = None,
) -> np.ndarray:
    """Read ``deblended`` (N, C, H, W) from ``path`` after checking it belongs to the test set.
    ``n_first``: a file holding only the first ``n_first`` stamps' outputs is accepted too.

    Raises:
        ValueError: N differs, the fingerprint is missing or differs (unless
            ``check_fingerprint`` is False), or the file's band ids differ from the test set's.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file of deblended outputs ({err})") from err
    with f:
        if "deblended" not in f:
            raise ValueError(f"{path}: no 'deblended' dataset (has {sorted(f.keys())})")
        dset = f["deblended"]
        if dset.ndim != 4 or dset.shape[0] not in (n_expected, n_first):
            raise ValueError(
                f"{path}: 'deblended' has shape {dset.shape}; the test set has N={n_expected} "
                "stamps (expected (N, C, H, W))"
            )
        if check_fingerprint:
            fp = deblended_fingerprint(f.attrs) or deblended_fingerprint(dset.attrs)
            if fp is None:
                raise ValueError(f"{path}: no test-set fingerprint in its attributes")
            if fp != fingerprint_expected:
                raise ValueError(
                    f"{path}: fingerprint {fp!r} does not match the test set's "
                    f"{fingerprint_expected!r}: the outputs are of another data set"
                )
        bands = _band_ids_attr(f.attrs)
        if bands is not None and band_ids_expected is not None and bands != band_ids_expected:
            raise ValueError(
                f"{path}: band ids {bands} differ from the test set's {band_ids_expected}"
            )
        return dset[...]


def _target_mags(ds, band: str, n: int) -> np.ndarray | None:
    """Reference-band AB magnitude of each stamp's target from the truth table, if it has one."""
    try:
        truth = ds.truth
        rows = np.asarray(truth["is_target"], dtype=bool)
        idx = np.asarray(truth["blend_index"])[rows]
        mags = np.asarray(truth[f"mag_{band}"], dtype=np.float64)[rows]
    except (KeyError, AttributeError, ValueError):
        return None
    if len(idx) != n or set(idx.tolist()) != set(range(n)):
        return None  # not exactly one target per stamp: no magnitude bins
    out = np.empty(n)
    out[idx] = mags
    return out


def evaluate_dataset(
    dataset,
    deblended,
    out_dir: str | Path,
    *,
    label: str = "run",
    reference_band: str | None = None,
    config: EvalConfig | None = None,
    limit: int | None = None,
    check_fingerprint: bool = True,
    posterior: dict[str, np.ndarray] | None = None,
) -> dict:
    """Evaluate a deblender on a test set file.

    Args:
        dataset: path of a test set (opened with ``vaedeblend.dataset.open_dataset``) or an
            object with that reader's API (``.read``, ``.keys``, ``.meta``, ``.band_ids``,
            ``.pixel_scales_arcsec``, ``.sky_levels_electrons``, ``.psf``, ``.truth``).
        deblended: (N, C, H, W) array of outputs in electrons, or the path of an HDF5 file of
            another deblender's outputs (see module docstring; N and fingerprint checked).
        out_dir, label, config: as ``evaluate_arrays``.
        reference_band: band of the paper's numbers; default: the test set's own (the band
            the simulation ranked and detected in: LSST r, HSC i, ...).
        limit: evaluate only the first ``limit`` stamps (quick looks).
        posterior: per-stamp posterior quantile columns (``flux_q16_<band>`` ... ``e2_q84``,
            (N,) each, ``PosteriorRefinedModel.deblend_with_columns``): written to
            ``posterior.npz``, and their coverage of the truth added to the report.

    Returns:
        the metrics dictionary written to ``out_dir/metrics.json``.
    """
    if limit is not None:
        check_positive("limit", limit)
    with contextlib.ExitStack() as stack:
        ds = dataset
        if isinstance(dataset, str | Path):
            from vaedeblend.dataset import open_dataset

            ds = stack.enter_context(open_dataset(dataset))
        reference_band = reference_band or ds.meta.get("reference_band", "lsst_r")
        data = _eval_data_from(ds, deblended, reference_band, limit, check_fingerprint)
    if posterior is not None:
        _add_posterior(data, posterior, Path(out_dir))
    return evaluate_data(data, out_dir, label=label, config=config)


def _add_posterior(data, posterior: dict, out_dir: Path) -> None:
    """Write the quantiles beside the report and put their coverage into its metrics."""
    from vaedeblend.evaluation.coverage import posterior_coverage

    n = len(data.target)
    columns = {k: np.asarray(v)[:n] for k, v in posterior.items()}
    if any(len(v) != n for v in columns.values()):
        raise ValueError(f"posterior columns must have one row per evaluated stamp ({n})")
    out_dir.mkdir(parents=True, exist_ok=True)
    savez_atomic(out_dir / "posterior.npz", columns)
    ref = data.ref
    data.extra["posterior_coverage"] = posterior_coverage(
        columns, data.target[:, ref], data.reference_band,
        float(data.pixel_scales_arcsec[ref]), data.snr, data.blendedness,
    )  # fmt: skip


def _eval_data_from(ds, deblended, reference_band: str, limit, check_fingerprint: bool):
    """Read the arrays of an evaluation from an open dataset and the outputs."""
    n = len(ds)
    bands = list(ds.band_ids)
    n_used = n if limit is None else min(limit, n)
    if isinstance(deblended, str | Path):
        fp = ds.meta.get("fingerprint")
        deblended = load_deblended(deblended, n, fp, bands, check_fingerprint, n_used)
    if len(deblended) not in (n, n_used):
        expected = f"{n}" if n_used == n else f"{n_used} (--limit) or {n}"
        raise ValueError(
            f"{len(deblended)} deblended stamps for a test set of {n}: expected {expected}"
        )
    sel = slice(0, n_used)
    keys = set(ds.keys())

    def opt(name):
        return ds.read(name, sel) if name in keys else None

    mags = _target_mags(ds, reference_band, n)
    data = make_eval_data(
        ds.read("target", sel), np.asarray(deblended[sel]), ds.read("blend", sel), bands,
        ds.pixel_scales_arcsec, list(ds.psf), ds.sky_levels_electrons,
        others=opt("others"), snr=opt("snr"), blendedness=opt("blendedness"),
        target_mag=None if mags is None else mags[sel], reference_band=reference_band,
    )  # fmt: skip
    meta_keys = ("fingerprint", "kind", "centring", "preset", "catalog", "seed", "n", "shear")
    data.extra = {"dataset": {k: ds.meta.get(k) for k in meta_keys}}
    return data
