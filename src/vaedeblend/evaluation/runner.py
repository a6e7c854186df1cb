"""Running a deblender over a test set, as ``evaluate`` and the demo do: a trained model (by
directory or shipped name) or one of the trivial rows (``none``: the blend itself; ``truth``:
the noiseless target), and the short table of headline numbers they print."""

from __future__ import annotations

import numpy as np

BASELINES = {
    "truth": "output = the noiseless target (a perfect deblender: every error is 0)",
    "none": "output = the noisy blend itself (no deblending)",
}


def run_model(
    model_name: str, data, limit: int | None, batch_size: int, device: str,
    refine: bool = False, prior: str | None = None, settings=None,
):  # fmt: skip
    """(N, C, H, W) outputs of a model or baseline on the test set's blends, electrons, in the
    test set's channel order; ``limit``: the first stamps only. ``refine``: the model's
    outputs refined jointly under its latent prior (``prior``: its directory; default the
    model's own; ``settings``: a RefineSettings, default its defaults;
    :func:`vaedeblend.refinement.refined`)."""
    if refine and model_name in ("truth", "none"):
        raise ValueError(f"--refine needs a trained model, not {model_name!r}")
    index = slice(0, limit)
    if model_name == "truth":
        return data.read("target", index)
    blends = data.read("blend", index)
    if model_name == "none":
        return blends
    from vaedeblend.pretrained import resolve_model

    model = resolve_model(model_name, device, batch_size)
    if refine:
        from vaedeblend.refinement import refined

        model = refined(model, prior, settings)
    return model.deblend(blends, bands=data.band_ids)


def run_refined_with_posterior(
    model_name: str, data, limit: int | None, batch_size: int, device: str,
    prior: str | None = None, settings=None,
):  # fmt: skip
    """(outputs as :func:`run_model` with ``refine``, posterior quantile columns (N,) each in
    the test set's bands, shapes in its reference band): the stamp outputs of
    ``evaluate --refine --posterior``."""
    from vaedeblend.pretrained import resolve_model
    from vaedeblend.refinement import refined

    if model_name in BASELINES:
        raise ValueError(f"--posterior needs a trained model, not {model_name!r}")
    model = refined(resolve_model(model_name, device, batch_size), prior, settings,
                    posterior=True)  # fmt: skip
    blends = data.read("blend", slice(0, limit))
    shape_band = data.meta.get("reference_band")
    return model.deblend_with_columns(blends, data.band_ids, shape_band=shape_band)


def headline_table(runs: list[dict]) -> str:
    """A short text table of the headline numbers of several evaluations."""
    keys = [
        ("m", "m (KSB)"),
        ("binned_abs_median_delta_abs_e", "binned |med d|e||"),
        ("binned_abs_median_delta_mag", "binned |med dmag|"),
        ("median_abs_delta_abs_e", "median |d|e||"),
        ("median_abs_delta_mag", "median |dmag|"),
    ]
    width = max([24] + [len(str(m.get("label", "?"))) + 2 for m in runs])
    rows = [f"{'run':<{width}}" + "".join(f"{title:>20}" for _, title in keys)]
    for metrics in runs:
        head = metrics.get("headline", {})
        cells = [head.get(k) for k, _ in keys]
        rows.append(
            f"{metrics.get('label', '?'):<{width}}"
            + "".join(
                f"{v:>20.4f}" if isinstance(v, float) and np.isfinite(v) else f"{'-':>20}"
                for v in cells
            )
        )
    return "\n".join(rows)
