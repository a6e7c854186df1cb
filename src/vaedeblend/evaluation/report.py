"""Evaluate a deblender's outputs against the noiseless truth: metrics.json, summary.md, figures.

Entry point: ``evaluate_arrays``. Images are (N, C, H, W) float arrays in electrons,
sky-subtracted, each channel at its own pixel scale (docs/contracts.md). Shapes are measured in
the reference band (LSST r by default, as the paper) unless ``EvalConfig.shape_bands`` says more;
fluxes, SSIM and residuals in every band.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vaedeblend import measure as ms
from vaedeblend._version import __version__
from vaedeblend.evaluation._io import savez_atomic, write_json_atomic, write_text_atomic
from vaedeblend.evaluation.bias import ellipticity_bias
from vaedeblend.evaluation.binned import (
    BLENDEDNESS_EDGES,
    MAG_EDGES,
    SNR_EDGES,
    binned_bias,
    binned_stats,
    error_summary,
    paper_binned_statistic,
)

PAPER_STAT_NAME = "binned |median| (paper statistic)"


@dataclass(frozen=True)
class EvalConfig:
    """Options of an evaluation.

    Attributes:
        aperture_radius_arcsec: radius of the circular aperture photometry, arcsec.
        shape_methods: ``ksb`` (paper) and/or ``adaptive`` (MADNESS); see ``measure_shapes``.
        shape_bands: bands whose shapes are measured; None = the reference band only.
        snr_edges, blendedness_edges, mag_edges: bin edges (S/N, B_tot, AB mag).
        min_count_bias: fewest galaxies for which a bin's m is computed.
        n_gallery: examples in the gallery figures; gallery_bands: None = all bands.
        figures: write the PNG figures.
    """

    aperture_radius_arcsec: float = 1.0
    shape_methods: tuple[str, ...] = ("ksb", "adaptive")
    shape_bands: tuple[str, ...] | None = None
    snr_edges: tuple[float, ...] = SNR_EDGES
    blendedness_edges: tuple[float, ...] = BLENDEDNESS_EDGES
    mag_edges: tuple[float, ...] = MAG_EDGES
    min_count_bias: int = 10
    n_gallery: int = 4
    gallery_bands: tuple[str, ...] | None = None
    figures: bool = True


@dataclass
class EvalData:
    """The arrays of one evaluation.

    ``target``, ``output``, ``blend``, ``others``: (N, C, H, W) electrons (``others`` may be None
    for isolated sets). ``pixel_scales_arcsec``, ``sky_levels_electrons``: (C,) (sky per pixel).
    ``psf_images``: C arrays (P, P) at each band's pixel scale. ``snr``, ``blendedness``,
    ``target_mag`` (AB, may be None): (N,), reference band.
    """

    target: np.ndarray
    output: np.ndarray
    blend: np.ndarray
    others: np.ndarray | None
    band_ids: list[str]
    pixel_scales_arcsec: np.ndarray
    psf_images: list[np.ndarray]
    sky_levels_electrons: np.ndarray
    snr: np.ndarray
    blendedness: np.ndarray
    target_mag: np.ndarray | None
    reference_band: str = "lsst_r"
    extra: dict = field(default_factory=dict)

    @property
    def ref(self) -> int:
        """Channel index of the reference band."""
        return self.band_ids.index(self.reference_band)

    def variance(self, c: int, index=slice(None)) -> np.ndarray:
        """Per-pixel noise variance of the input in channel c (Poisson: sky + noiseless light),
        electrons^2, for the stamps ``index`` (default all: (N, H, W))."""
        light = self.target[index, c]
        if self.others is not None:
            light = light + self.others[index, c]
        return self.sky_levels_electrons[c] + np.clip(light, 0.0, None)


def check_finite_stamps(stamps: np.ndarray, name: str) -> None:
    """ValueError naming the stamps of (N, C, H, W) ``stamps`` that hold NaN or infinite
    pixels: such a galaxy would otherwise count only as a measurement failure and leave the
    headline numbers looking perfect."""
    bad = np.flatnonzero(~np.isfinite(stamps).all(axis=tuple(range(1, stamps.ndim))))
    if len(bad):
        first = ", ".join(str(i) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(
            f"{name}: {len(bad)} of {len(stamps)} stamps hold NaN or infinite pixels "
            f"(indices {first})"
        )


def make_eval_data(
    target, output, blend, band_ids, pixel_scales_arcsec, psf_images, sky_levels_electrons,
    *, others=None, snr=None, blendedness=None, target_mag=None, reference_band="lsst_r",
) -> EvalData:  # fmt: skip
    """Check shapes and fill defaults: S/N and B_tot computed from the truth when not given."""
    arrs = {"target": target, "output": output, "blend": blend}
    if others is not None:
        arrs["others"] = others
    arrs = {k: np.asarray(v, dtype=np.float32) for k, v in arrs.items()}
    shapes = {k: v.shape for k, v in arrs.items()}
    if len(set(shapes.values())) != 1 or arrs["target"].ndim != 4:
        raise ValueError(f"arrays must all be (N, C, H, W) of one shape, got {shapes}")
    for name, array in arrs.items():
        check_finite_stamps(array, name)
    band_ids = list(band_ids)
    if len(band_ids) != arrs["target"].shape[1]:
        raise ValueError(f"{len(band_ids)} band ids for {arrs['target'].shape[1]} channels")
    if reference_band not in band_ids:
        raise ValueError(f"reference band {reference_band!r} not in {band_ids}")
    ref = band_ids.index(reference_band)
    sky = np.asarray(sky_levels_electrons, dtype=np.float64)
    n = arrs["target"].shape[0]
    for name, v in (("snr", snr), ("blendedness", blendedness), ("target_mag", target_mag)):
        if v is not None and np.shape(v) != (n,):
            raise ValueError(f"{name} must be (N,) = ({n},), got shape {np.shape(v)}")
    t_ref = arrs["target"][:, ref]
    if snr is None:
        snr = ms.snr(t_ref, sky[ref])
    if blendedness is None:
        o = arrs.get("others")
        blendedness = np.zeros(len(t_ref)) if o is None else ms.blendedness(t_ref, o[:, ref])
    return EvalData(
        arrs["target"], arrs["output"], arrs["blend"], arrs.get("others"), band_ids,
        np.asarray(pixel_scales_arcsec, dtype=np.float64), [np.asarray(p) for p in psf_images],
        sky, np.asarray(snr, dtype=np.float64), np.asarray(blendedness, dtype=np.float64),
        None if target_mag is None else np.asarray(target_mag, dtype=np.float64), reference_band,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Per-galaxy measurements
# --------------------------------------------------------------------------------------------


def _measure_shapes(data: EvalData, config: EvalConfig, per: dict, failures: dict) -> None:
    bands = config.shape_bands or (data.reference_band,)
    unknown = [b for b in bands if b not in data.band_ids]
    if unknown:
        raise ValueError(f"shape bands {unknown} are not among {data.band_ids}")
    for method in config.shape_methods:
        for band in bands:
            c = data.band_ids.index(band)
            psf, scale = data.psf_images[c], data.pixel_scales_arcsec[c]
            for which, imgs in (("target", data.target), ("output", data.output)):
                res = ms.measure_shapes(imgs[:, c], psf, scale, method=method)
                per[f"{method}.{band}.g_{which}"] = np.stack([res.g1, res.g2], axis=1)
                failures[f"{method}.{band}.{which}"] = {"n_failed": res.n_failed, **res.reasons}
            g_in, g_out = per[f"{method}.{band}.g_target"], per[f"{method}.{band}.g_output"]
            per[f"{method}.{band}.delta_abs_e"] = np.hypot(*g_out.T) - np.hypot(*g_in.T)


def _measure_fluxes(data: EvalData, config: EvalConfig, per: dict) -> None:
    for c, band in enumerate(data.band_ids):
        scale = data.pixel_scales_arcsec[c]
        for which, imgs in (("target", data.target), ("output", data.output)):
            per[f"flux_sum.{band}.{which}"] = ms.flux_sum(imgs[:, c])
            flux, flags = ms.aperture_flux(imgs[:, c], scale, config.aperture_radius_arcsec)
            per[f"flux_aperture.{band}.{which}"] = flux
            per[f"flux_aperture.{band}.{which}_flags"] = flags
        for kind in ("flux_sum", "flux_aperture"):
            f_in, f_out = per[f"{kind}.{band}.target"], per[f"{kind}.{band}.output"]
            per[f"{kind}.{band}.delta_mag"] = ms.mag_error(f_out, f_in)
            with np.errstate(invalid="ignore", divide="ignore"):
                per[f"{kind}.{band}.rel_error"] = np.where(f_in > 0, (f_out - f_in) / f_in, np.nan)


def _measure_pixels(data: EvalData, per: dict, chunk: int = 1024) -> None:
    # In chunks of stamps: SSIM and chi hold several float64 copies of the batch, too much
    # memory for a 10,000-stamp test set at once.
    n = data.target.shape[0]
    for c, band in enumerate(data.band_ids):
        parts = []
        for lo in range(0, n, chunk):
            sl = slice(lo, min(lo + chunk, n))
            t, o = data.target[sl, c], data.output[sl, c]
            parts.append({"ssim": ms.ssim(t, o), **ms.residual_stats(o, t, data.variance(c, sl))})
        per[f"ssim.{band}"] = np.concatenate([p["ssim"] for p in parts])
        for k in ("mean", "rms", "chi_mean", "chi_rms"):
            per[f"residual_{k}.{band}"] = np.concatenate([p[k] for p in parts])


def measure_all(data: EvalData, config: EvalConfig) -> tuple[dict[str, np.ndarray], dict]:
    """All per-galaxy measurements: ({name: (N,) or (N, 2) array}, shape failure counts)."""
    per: dict[str, np.ndarray] = {
        "snr": data.snr,
        "blendedness": data.blendedness,
    }
    if data.target_mag is not None:
        per["target_mag"] = data.target_mag
    failures: dict = {}
    _measure_shapes(data, config, per, failures)
    _measure_fluxes(data, config, per)
    _measure_pixels(data, per)
    return per, failures


# --------------------------------------------------------------------------------------------
# Summary numbers
# --------------------------------------------------------------------------------------------


def _error_block(blendedness: np.ndarray, err: np.ndarray) -> dict:
    """Paper statistic and plain statistics of one signed error."""
    return {"paper_binned": paper_binned_statistic(blendedness, err), **error_summary(err)}


def _shape_metrics(per: dict, failures: dict, data: EvalData, method: str, band: str) -> dict:
    key = f"{method}.{band}"
    g_in, g_out = per[f"{key}.g_target"], per[f"{key}.g_output"]
    return {
        "failures_target": failures[f"{key}.target"],
        "failures_output": failures[f"{key}.output"],
        "ellipticity_bias": ellipticity_bias(g_in, g_out).to_dict(),
        "delta_abs_e": _error_block(data.blendedness, per[f"{key}.delta_abs_e"]),
        "residual_g1": error_summary(g_out[:, 0] - g_in[:, 0]),
        "residual_g2": error_summary(g_out[:, 1] - g_in[:, 1]),
    }


def _band_metrics(per: dict, data: EvalData, band: str) -> dict:
    out: dict = {}
    for kind in ("flux_sum", "flux_aperture"):
        rel = per[f"{kind}.{band}.rel_error"]
        out[kind] = {
            "delta_mag": _error_block(data.blendedness, per[f"{kind}.{band}.delta_mag"]),
            "rel_error": error_summary(rel),
            "n_nonpositive_output": int(np.sum(per[f"{kind}.{band}.output"] <= 0)),
        }
    out["flux_aperture"]["n_truncated"] = int(
        np.sum(per[f"flux_aperture.{band}.target_flags"] != 0)
    )
    out["ssim"] = error_summary(per[f"ssim.{band}"])
    out["residual"] = {
        k: error_summary(per[f"residual_{k}.{band}"])
        for k in ("mean", "rms", "chi_mean", "chi_rms")
    }
    return out


def _binned_metrics(per: dict, data: EvalData, config: EvalConfig) -> dict:
    """Median/quartiles of delta|e| (KSB) and delta mag (stamp sum), and m, in bins of x."""
    ref = data.reference_band
    method = "ksb" if "ksb" in config.shape_methods else config.shape_methods[0]
    xs = {"snr": (data.snr, config.snr_edges)}
    xs["blendedness"] = (data.blendedness, config.blendedness_edges)
    if data.target_mag is not None:
        xs["mag"] = (data.target_mag, config.mag_edges)
    out = {"shape_method": method, "flux": "flux_sum", "band": ref}
    g_in, g_out = per[f"{method}.{ref}.g_target"], per[f"{method}.{ref}.g_output"]
    for name, (x, edges) in xs.items():
        out[name] = {
            "delta_abs_e": binned_stats(x, per[f"{method}.{ref}.delta_abs_e"], edges).to_dict(),
            "delta_mag": binned_stats(x, per[f"flux_sum.{ref}.delta_mag"], edges).to_dict(),
            "m": binned_bias(x, g_in, g_out, edges, config.min_count_bias),
        }
    return out


def _headline(metrics: dict) -> dict:
    """The numbers put next to the paper's and MADNESS's tables (reference band)."""
    ref = metrics["reference_band"]
    shapes, band = metrics["shapes"], metrics["bands"][ref]
    head: dict = {}
    if "ksb" in shapes:
        ksb = shapes["ksb"][ref]
        bias = ksb["ellipticity_bias"]
        head.update({k: bias[k] for k in ("m", "m_err", "c", "c_err", "m1", "m2", "c1", "c2")})
        de = ksb["delta_abs_e"]
        head["binned_abs_median_delta_abs_e"] = de["paper_binned"]["binned_abs_median"]
        head["binned_abs_q1_delta_abs_e"] = de["paper_binned"]["binned_abs_q1"]
        head["binned_abs_q3_delta_abs_e"] = de["paper_binned"]["binned_abs_q3"]
        head["median_delta_abs_e"] = de["median"]
        head["median_abs_delta_abs_e"] = de["median_abs"]
        head["ksb_failed_target"] = ksb["failures_target"]["n_failed"]
        head["ksb_failed_output"] = ksb["failures_output"]["n_failed"]
    dm = band["flux_sum"]["delta_mag"]
    head["binned_abs_median_delta_mag"] = dm["paper_binned"]["binned_abs_median"]
    head["binned_abs_q1_delta_mag"] = dm["paper_binned"]["binned_abs_q1"]
    head["binned_abs_q3_delta_mag"] = dm["paper_binned"]["binned_abs_q3"]
    head["median_delta_mag"] = dm["median"]
    head["median_abs_delta_mag"] = dm["median_abs"]
    head["mean_abs_rel_flux_error_aperture"] = band["flux_aperture"]["rel_error"]["mean_abs"]
    if "adaptive" in shapes:
        head["sigma_g1_residual_adaptive"] = shapes["adaptive"][ref]["residual_g1"]["std"]
    head["mean_ssim"] = band["ssim"]["mean"]
    return head


def summarise(per: dict, failures: dict, data: EvalData, config: EvalConfig, label: str) -> dict:
    """Build the metrics dictionary written to metrics.json."""
    shape_bands = config.shape_bands or (data.reference_band,)
    metrics: dict = {
        "label": label,
        "n": int(data.target.shape[0]),
        "reference_band": data.reference_band,
        "band_ids": data.band_ids,
        "package_version": __version__,
        "config": asdict(config),
        "definitions": {
            "paper_binned": f"{PAPER_STAT_NAME}: mean over 10 equal-width B_tot bins in "
            "[0, 0.55] of |median| (|Q1|, |Q3|) of the signed error",
            "delta_abs_e": "|g|_output - |g|_target (reduced shear)",
            "delta_mag": "-2.5 log10(F_output / F_target)",
            "ellipticity_bias": "regression of g_i(output) on g_i(target): m = slope - 1, "
            "c = intercept; not a shear bias",
        },
        "shapes": {
            m: {b: _shape_metrics(per, failures, data, m, b) for b in shape_bands}
            for m in config.shape_methods
        },
        "bands": {b: _band_metrics(per, data, b) for b in data.band_ids},
        "binned": _binned_metrics(per, data, config),
    }
    metrics["headline"] = _headline(metrics)
    metrics.update(data.extra)
    return metrics


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def format_value(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, int | np.integer):
        return str(int(v))
    return f"{v + 0.0:.{digits}g}"  # + 0.0 turns -0.0 into 0.0


HEADLINE_ROWS = (
    ("m", "ellipticity bias m (KSB, regression)"),
    ("m_err", "  error on m"),
    ("c", "additive c"),
    ("binned_abs_median_delta_abs_e", f"delta |e|: {PAPER_STAT_NAME}"),
    ("binned_abs_q1_delta_abs_e", "delta |e|: binned |Q1|"),
    ("binned_abs_q3_delta_abs_e", "delta |e|: binned |Q3|"),
    ("median_delta_abs_e", "delta |e|: median"),
    ("median_abs_delta_abs_e", "delta |e|: median of absolute errors"),
    ("binned_abs_median_delta_mag", f"delta mag: {PAPER_STAT_NAME}"),
    ("binned_abs_q1_delta_mag", "delta mag: binned |Q1|"),
    ("binned_abs_q3_delta_mag", "delta mag: binned |Q3|"),
    ("median_delta_mag", "delta mag: median"),
    ("median_abs_delta_mag", "delta mag: median of absolute errors"),
    ("mean_abs_rel_flux_error_aperture", "mean |dF/F|, aperture (MADNESS)"),
    ("sigma_g1_residual_adaptive", "std of g1 residual, adaptive moments (MADNESS)"),
    ("mean_ssim", "mean SSIM"),
    ("ksb_failed_target", "KSB failures on the target"),
    ("ksb_failed_output", "KSB failures on the output"),
)


def md_cell(text: str) -> str:
    """Escape the pipes of a Markdown table cell (the metric names contain |e|, |median|)."""
    return text.replace("|", r"\|")


def summary_markdown(metrics: dict) -> str:
    """A Markdown report: headline table (reference band) and a per-band table."""
    head = metrics["headline"]
    lines = [
        f"# Evaluation: {metrics['label']}",
        "",
        f"N = {metrics['n']}, reference band {metrics['reference_band']}, "
        f"package {metrics['package_version']}.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [
        f"| {md_cell(name)} | {format_value(head.get(key))} |"
        for key, name in HEADLINE_ROWS
        if key in head
    ]
    lines += [
        "",
        "Per band (delta mag and dF/F: output vs noiseless target; SSIM: mean; chi: rms of "
        "residual / input noise, median over stamps):",
        "",
        "| band | median delta mag (sum) | median abs delta mag (sum) | mean abs dF/F (aperture) "
        "| mean SSIM | median chi rms |",
        "|---|---|---|---|---|---|",
    ]
    for band, b in metrics["bands"].items():
        cells = [
            b["flux_sum"]["delta_mag"]["median"],
            b["flux_sum"]["delta_mag"]["median_abs"],
            b["flux_aperture"]["rel_error"]["mean_abs"],
            b["ssim"]["mean"],
            b["residual"]["chi_rms"]["median"],
        ]
        lines.append(f"| {band} | " + " | ".join(format_value(v) for v in cells) + " |")
    lines += ["", "Definitions:", ""]
    lines += [f"- {k}: {v}" for k, v in metrics["definitions"].items()]
    if metrics.get("posterior_coverage"):
        from vaedeblend.evaluation.coverage import coverage_markdown

        lines += ["", *coverage_markdown(metrics["posterior_coverage"])]
    if metrics.get("figures"):
        lines += ["", "Figures:", ""] + [f"![{f}]({f})" for f in metrics["figures"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def evaluate_data(
    data: EvalData, out_dir: str | Path, label: str = "run", config: EvalConfig | None = None
) -> dict:
    """Measure, summarise and write the report of prepared ``EvalData`` (see evaluate_arrays)."""
    from vaedeblend.evaluation.figures import make_report_figures

    config = config or EvalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per, failures = measure_all(data, config)
    metrics = summarise(per, failures, data, config, label)
    savez_atomic(out / "per_galaxy.npz", per)
    metrics["figures"] = (
        make_report_figures(data, per, metrics, config, out) if config.figures else []
    )
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "summary.md", summary_markdown(metrics))
    return metrics


def evaluate_arrays(
    target: np.ndarray,
    output: np.ndarray,
    blend: np.ndarray,
    band_ids: list[str],
    pixel_scales_arcsec,
    psf_images,
    sky_levels_electrons,
    out_dir: str | Path,
    *,
    others: np.ndarray | None = None,
    snr: np.ndarray | None = None,
    blendedness: np.ndarray | None = None,
    target_mag: np.ndarray | None = None,
    reference_band: str = "lsst_r",
    label: str = "run",
    config: EvalConfig | None = None,
) -> dict:
    """Evaluate deblended stamps against the truth; write metrics.json, summary.md and figures.

    Args:
        target: (N, C, H, W) noiseless central galaxy, electrons.
        output: (N, C, H, W) the deblender's estimate of ``target``, electrons.
        blend: (N, C, H, W) the noisy input (used for the gallery only), electrons.
        band_ids: C band ids in channel order; pixel_scales_arcsec: (C,) arcsec.
        psf_images: C PSF images (P, P), each at its band's pixel scale.
        sky_levels_electrons: (C,) sky per pixel, electrons.
        out_dir: folder to write ``metrics.json``, ``summary.md``, ``per_galaxy.npz`` and PNGs.
        others: (N, C, H, W) noiseless neighbours (for B_tot and the noise variance), optional.
        snr, blendedness: (N,) of the target in the reference band; computed from ``target``
            (and ``others``) with the paper formulas when None.
        target_mag: (N,) AB magnitude of the target in the reference band (bins in magnitude
            are skipped when None).
        reference_band: the band of the paper's numbers (LSST r).
        label: name of this run in the reports.
        config: options, see ``EvalConfig``.

    Returns:
        the metrics dictionary, as written to metrics.json (NaN written as null).
    """
    data = make_eval_data(
        target, output, blend, band_ids, pixel_scales_arcsec, psf_images, sky_levels_electrons,
        others=others, snr=snr, blendedness=blendedness, target_mag=target_mag,
        reference_band=reference_band,
    )  # fmt: skip
    return evaluate_data(data, out_dir, label=label, config=config)
