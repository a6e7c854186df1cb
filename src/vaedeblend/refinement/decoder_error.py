"""The decoder's own error, measured on isolated galaxies with known truth, for the posteriors.

The Laplace posterior (:mod:`.posterior`) describes the noise given the model: it assumes the
decoder can draw the galaxy exactly. It cannot: on isolated galaxies the shipped VAEs' fluxes
and shapes scatter around the truth by more than the noise at high S/N, so intervals that
ignore it are too narrow exactly where the data are best (``benchmarks/bench_posterior.py``).

This module measures that error once, when the prior is fitted: isolated galaxies (the noisy
stamps the encoder is trained on) are encoded and decoded, and each decoded galaxy is compared
with its noiseless target: the relative stamp-sum flux error per band and the adaptive-moment
(g1, g2) error in one band. The residuals are kept, with each galaxy's S/N; a posterior then
draws, for every latent sample, one residual of a galaxy of similar S/N (the same S/N-quantile
bin), taken about the bin's median, and applies it to that sample's flux and shape: the
intervals hold the noise and the decoder's scatter together (a bootstrap of the model error,
added to the statistical draws). The bin's median itself, the isolated decoder's mean bias, is
not added: refinement fits the data and removes much of it.

On blends that is not enough: the neighbours' light left in the refined galaxy biases it (at
S/N 10-50 the refined lsst+euclid flux was 7-17 % too bright) and isolated residuals cannot
hold that. A *calibration* on simulated blends (``vaedeblend prior --calibrate-on``,
:func:`measure_refined_error`) keeps instead the residuals of the refined estimate itself
against the truth, binned by the refined galaxy's own S/N (what is known at use time); its
draws keep the bin's median, so that ``truth = estimate / (1 + residual)`` corrects the bias
the refinement leaves at that S/N as well as widening the intervals by its scatter.

The refined error also grows with blendedness: on 2,000 detected LSST blends calibrated by S/N
alone, 85 % of the fluxes of targets with B_tot < 0.05 fell in the 68 % intervals and 25 % of
those with B_tot > 0.3 (60 % too bright). The truth's B_tot is not known at use time, so a
calibration also keeps an estimate of it from the data (:func:`estimated_blendedness`: the
refined central galaxy against the rest of the observed stamp; since 2026-12-06 the larger of
that and the same for the deblender's one-pass central, :func:`blendedness_estimate`), and its
draws are matched in
S/N and in that estimate: within each S/N bin, in blendedness quarters (calibrations of
2026-12-04); since then among the galaxy's nearest calibration neighbours in (S/N rank,
``blend_weight`` x estimated-blendedness rank), which follows the few strongly blended targets
that a quarter mixes with milder ones (``n_neighbours``; benchmarks/RESULTS.md, "Posterior
calibration matching" and "Posterior coverage").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from vaedeblend.argtypes import check_positive
from vaedeblend.files import publish
from vaedeblend.measure import blendedness as blendedness_of
from vaedeblend.measure import flux_sum, measure_shapes, snr

FILE = "decoder_error.safetensors"
CALIBRATION_FILE = "refined_error.safetensors"
# a blendedness sub-bin is used only when it holds this many residuals (else its S/N bin)
MIN_SUB_BIN = 20
# neighbours a calibrated draw is matched in: this share of the calibration, at least 50
NEIGHBOUR_SHARE, MIN_NEIGHBOURS = 0.05, 50
# distance between calibration galaxies: (S/N rank)^2 + (BLEND_WEIGHT x blendedness rank)^2;
# the refined error depends far more on blendedness than on S/N once the S/N is above ~10
BLEND_WEIGHT = 4.0
# How a calibration estimates each galaxy's blendedness (its config.json label): "refined" sets
# the refined central against the rest of the stamp (calibrations before 2026-12-06, eighth
# session); "max_one_pass" takes the larger of that and the same for the deblender's one-pass
# central, which has not absorbed the neighbours' light that refinement may put into the target
# (it ranks the refined flux errors and the strongly blended targets better: RESULTS.md,
# "Blendedness estimates for the posterior calibration", benchmarks/blendedness_estimates.py).
BLENDEDNESS_ESTIMATES = {
    "refined": "estimated_blendedness, r band",
    "max_one_pass": "estimated_blendedness, r band, larger of the refined and one-pass centrals'",
}
# quantiles of K residuals at positions p (K + 1): a new galaxy's residual falls between those at
# p1 and p2 with probability p2 - p1, where the default (linear) ones cover (p2 - p1)(K - 1) /
# (K + 1): 65 % instead of 68 % with 50 residuals
PREDICTIVE = "weibull"


@dataclass(frozen=True)
class DecoderError:
    """Residuals of a model's galaxies against their noiseless truth.

    Attributes:
        snr: (N,) each galaxy's S/N in ``shape_channel``: the truth's (isolated residuals) or
            the refined estimate's (``calibrated``).
        flux_rel: (N, C) (estimate - true) / true stamp-sum flux per model band.
        g: (N, 2) estimate - true adaptive-moment (g1, g2) in ``shape_channel``.
        shape_channel: the model channel of ``g`` and of the S/N (the r band).
        n_bins: S/N-quantile bins the draws are matched in.
        calibrated: residuals of the refined estimate on simulated blends, drawn with their
            bin's median (the bias they correct); False: the decoder's on isolated galaxies,
            drawn about it (the scatter only).
        blendedness: (N,) each galaxy's :func:`estimated_blendedness`, or None (calibrations
            written before it, isolated residuals): draws are then matched in S/N only.
        n_blend_bins: blendedness-quantile sub-bins within each S/N bin.
        n_neighbours: when > 0 (and both the residuals and a draw have a blendedness), draws
            come from the ``n_neighbours`` residuals nearest in (S/N rank, ``blend_weight`` x
            blendedness rank) instead of the S/N and blendedness bins.
        blend_weight: the blendedness rank's weight in that distance.
        blendedness_estimate: how ``blendedness`` was estimated, a key of
            :data:`BLENDEDNESS_ESTIMATES`; draws must estimate theirs the same way
            (:func:`blendedness_estimate`).
    """

    snr: np.ndarray
    flux_rel: np.ndarray
    g: np.ndarray
    shape_channel: int
    n_bins: int = 5
    calibrated: bool = False
    blendedness: np.ndarray | None = None
    n_blend_bins: int = 4
    n_neighbours: int = 0
    blend_weight: float = BLEND_WEIGHT
    blendedness_estimate: str = "refined"

    def __post_init__(self):
        if self.blendedness_estimate not in BLENDEDNESS_ESTIMATES:
            raise ValueError(
                f"unknown blendedness estimate {self.blendedness_estimate!r}; known: "
                f"{sorted(BLENDEDNESS_ESTIMATES)}"
            )
        check_positive("n_bins", self.n_bins)
        check_positive("n_blend_bins", self.n_blend_bins)
        check_positive("blend_weight", self.blend_weight)
        if not 0 <= self.n_neighbours <= len(self.snr):
            raise ValueError(
                f"n_neighbours must be 0 (bins) to {len(self.snr)}, got {self.n_neighbours}"
            )
        n = len(self.snr)
        if self.blendedness is not None and np.shape(self.blendedness) != (n,):
            raise ValueError(f"blendedness {np.shape(self.blendedness)} for {n} residuals")
        if n < self.n_bins or self.flux_rel.shape[0] != n or self.g.shape != (n, 2):
            raise ValueError(
                f"decoder error arrays disagree or are too few: snr {self.snr.shape}, "
                f"flux_rel {self.flux_rel.shape}, g {self.g.shape}, {self.n_bins} bins"
            )
        for name in ("snr", "flux_rel", "g", "blendedness"):
            if getattr(self, name) is not None and not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"decoder error {name} holds NaN or infinite values")
        if self.calibrated and np.any(self.flux_rel <= -1):
            # truth = estimate / (1 + residual) needs estimates of positive flux
            raise ValueError("calibration residuals must be > -1 (estimates of positive flux)")

    def _bin_of(self, snr: np.ndarray) -> np.ndarray:
        inner = np.quantile(self.snr, np.linspace(0, 1, self.n_bins + 1)[1:-1])
        return np.searchsorted(inner, np.asarray(snr, dtype=float))

    def by_snr_bin(self) -> list[dict]:
        """Per S/N bin: its S/N range and the median relative flux error (in the shape band)
        and median abs(g error): the decoder's bias and imprecision as S/N grows."""
        bins, c = self._bin_of(self.snr), self.shape_channel
        return [
            {
                "snr_min": float(self.snr[bins == k].min()),
                "snr_max": float(self.snr[bins == k].max()),
                "n": int(np.sum(bins == k)),
                "median_flux_rel": float(np.median(self.flux_rel[bins == k, c])),
                "median_abs_flux_rel": float(np.median(np.abs(self.flux_rel[bins == k, c]))),
                "median_abs_g": float(np.median(np.abs(self.g[bins == k]))),
            }
            for k in range(self.n_bins)
        ]

    def draw(
        self,
        snr: np.ndarray,
        n_samples: int,
        rng: np.random.Generator,
        blendedness: np.ndarray | None = None,
    ):
        """Residuals for galaxies of S/N ``snr`` (B,): (B, S, C) relative flux errors and
        (B, S, 2) shape errors, from the measured galaxies in the same S/N bin (and, when both
        this error and the call have a ``blendedness`` (B,), the same blendedness sub-bin of
        it; a calibration with ``n_neighbours``: the galaxy's nearest residuals instead of
        the bins, :meth:`neighbours`). Isolated residuals are drawn at random (with ``rng``)
        about the bin's median; a calibration's are its bin's own quantiles at S evenly spaced
        levels, per column: the bin's empirical distribution without the resampling noise that
        random draws add to interval ends (which narrows intervals on average), and all the
        marginal quantiles of a posterior need."""
        levels = (np.arange(n_samples) + 0.5) / n_samples
        if self._matches_neighbours(blendedness):
            near = self.neighbours(snr, blendedness)  # (B, K)
            flux = np.quantile(self.flux_rel[near], levels, axis=1, method=PREDICTIVE)
            g = np.quantile(self.g[near], levels, axis=1, method=PREDICTIVE)  # (S, B, 2)
            return np.moveaxis(flux, 0, 1), np.moveaxis(g, 0, 1)
        mine, wanted = self._bin_of(self.snr), self._bin_of(snr)
        flux = np.empty((len(wanted), n_samples, self.flux_rel.shape[1]))
        g = np.empty((len(wanted), n_samples, 2))
        for k in np.unique(wanted):
            in_bin = np.flatnonzero(mine == k)
            for b in np.flatnonzero(wanted == k):
                members = self._members(in_bin, None if blendedness is None else blendedness[b])
                # isolated residuals about the bin's median: the scatter, not the mean bias,
                # which refinement's fit to the data largely removes; a calibration keeps it
                centre = not self.calibrated
                flux_k = self.flux_rel[members] - centre * np.median(self.flux_rel[members], 0)
                g_k = self.g[members] - centre * np.median(self.g[members], axis=0)
                if self.calibrated:
                    flux[b] = np.quantile(flux_k, levels, axis=0, method=PREDICTIVE)
                    g[b] = np.quantile(g_k, levels, axis=0, method=PREDICTIVE)
                else:
                    pick = rng.integers(0, len(members), size=n_samples)
                    flux[b], g[b] = flux_k[pick], g_k[pick]
        return flux, g

    def _matches_neighbours(self, blendedness) -> bool:
        known = self.blendedness is not None and blendedness is not None
        return self.calibrated and self.n_neighbours > 0 and known

    def neighbours(self, snr: np.ndarray, blendedness: np.ndarray, chunk: int = 1024):
        """(B, n_neighbours) indices of the residuals nearest each galaxy of ``snr`` and
        ``blendedness`` (B,) in (S/N rank, ``blend_weight`` x blendedness rank); ranks are
        the residuals' own empirical distribution functions, so S/N and blendedness are on
        one scale whatever their units."""

        def ranks(ref, x):
            return np.searchsorted(np.sort(ref), np.asarray(x, dtype=float)) / len(ref)

        mine = np.stack(
            [
                ranks(self.snr, self.snr),
                self.blend_weight * ranks(self.blendedness, self.blendedness),
            ],
            1,
        )
        theirs = np.stack(
            [ranks(self.snr, snr), self.blend_weight * ranks(self.blendedness, blendedness)], 1
        )
        near = []
        for start in range(0, len(theirs), chunk):  # (chunk, N) distances at a time
            d2 = ((theirs[start : start + chunk, None] - mine[None]) ** 2).sum(-1)
            near.append(np.argpartition(d2, self.n_neighbours - 1, axis=1)[:, : self.n_neighbours])
        return np.concatenate(near) if near else np.empty((0, self.n_neighbours), int)

    def _members(self, in_bin: np.ndarray, blendedness: float | None) -> np.ndarray:
        """The residuals of an S/N bin (indices ``in_bin``) a galaxy of ``blendedness`` draws
        from: its blendedness-quantile sub-bin when known and well filled, else all of them."""
        if blendedness is None or self.blendedness is None or self.n_blend_bins == 1:
            return in_bin
        values = self.blendedness[in_bin]
        inner = np.quantile(values, np.linspace(0, 1, self.n_blend_bins + 1)[1:-1])
        sub = np.searchsorted(inner, values)
        members = in_bin[sub == np.searchsorted(inner, blendedness)]
        return members if len(members) >= MIN_SUB_BIN else in_bin


def estimated_blendedness(central_electrons: np.ndarray, stamps_electrons: np.ndarray):
    """B_tot of a refined central galaxy estimated from the data, known at use time: the
    central model (N, H, W) against the rest of the observed stamp (N, H, W), blend minus that
    model (its neighbours plus noise; the noise averages out of the sums)."""
    central = np.clip(np.asarray(central_electrons, dtype=np.float64), 0, None)
    return blendedness_of(central, np.asarray(stamps_electrons, dtype=np.float64) - central)


def blendedness_estimate(kind: str, refined, stamps, one_pass=None) -> np.ndarray:
    """(N,) the blendedness estimate ``kind`` (:data:`BLENDEDNESS_ESTIMATES`) of refined central
    galaxies ``refined`` (N, H, W electrons) in observed ``stamps`` (N, H, W); ``max_one_pass``
    also needs the deblender's one-pass centrals ``one_pass`` (N, H, W)."""
    estimate = estimated_blendedness(refined, stamps)
    if kind == "refined":
        return estimate
    if kind != "max_one_pass":
        raise ValueError(f"unknown blendedness estimate {kind!r}")
    if one_pass is None:
        raise ValueError("the max_one_pass blendedness estimate needs the one-pass centrals")
    return np.maximum(estimate, estimated_blendedness(one_pass, stamps))


def r_channel(band_ids) -> int:
    """The model channel of the first r band (``lsst_r``): the shapes' and S/N's band."""
    r_bands = [i for i, b in enumerate(band_ids) if b.endswith("_r")]
    return r_bands[0] if r_bands else 0


def measure_decoder_error(
    model,
    stamps: np.ndarray,
    targets: np.ndarray,
    snr: np.ndarray,
    shape_channel: int,
    scale_arcsec: float,
) -> DecoderError:
    """Encode the noisy isolated ``stamps`` (N, C, H, W electrons, model band order), decode
    their latent means and compare with the noiseless ``targets``; galaxies whose true flux is
    not positive in a band, or whose shape measurement fails, are left out."""
    mu, _ = model.encode(stamps, bands=model.band_ids)
    return _residuals(model.decode(mu), targets, snr, shape_channel, scale_arcsec, False)


def measure_refined_error(
    refiner, stamps: np.ndarray, targets: np.ndarray, shape_channel: int, scale_arcsec: float
) -> DecoderError:
    """The calibration: refine the simulated blends ``stamps`` (N, C, H, W electrons, model
    band order) with ``refiner`` (a :class:`~.joint.RefinedModel`) and compare each refined
    central galaxy with its noiseless ``targets``, binned by the refined galaxy's S/N in
    ``shape_channel`` against the model's sky; galaxies refined to a non-positive flux are left
    out with those :func:`measure_decoder_error` leaves out."""
    central = refiner.refine(stamps).central
    sky = float(refiner.model.config["sky_levels_electrons"][shape_channel])
    estimate_snr = snr(np.clip(central[:, shape_channel], 0, None), sky)
    c = shape_channel
    one_pass = refiner.model.deblend(stamps, bands=refiner.model.band_ids)[:, c]
    b_est = blendedness_estimate("max_one_pass", central[:, c], stamps[:, c], one_pass)
    return _residuals(central, targets, estimate_snr, shape_channel, scale_arcsec, True, b_est,
                      "max_one_pass")  # fmt: skip


def _residuals(estimate, targets, snr_of, shape_channel, scale_arcsec, calibrated, b_est=None,
               b_kind="refined"):  # fmt: skip
    true_flux, out_flux = flux_sum(targets), flux_sum(estimate)
    true_shape = measure_shapes(targets[:, shape_channel], None, scale_arcsec, method="adaptive")
    out_shape = measure_shapes(estimate[:, shape_channel], None, scale_arcsec, method="adaptive")
    keep = (true_flux > 0).all(axis=1) & ~true_shape.failed & ~out_shape.failed
    if calibrated:  # truth = estimate / (1 + residual) needs an estimate of positive flux
        keep &= (out_flux > 0).all(axis=1)
    g = np.stack([out_shape.g1 - true_shape.g1, out_shape.g2 - true_shape.g2], axis=1)
    keep &= np.isfinite(g).all(axis=1)
    rel = out_flux[keep] / true_flux[keep] - 1.0
    n = int(keep.sum())
    neighbours = min(n, max(MIN_NEIGHBOURS, round(NEIGHBOUR_SHARE * n)))
    return DecoderError(
        np.asarray(snr_of, float)[keep], rel, g[keep], int(shape_channel), calibrated=calibrated,
        blendedness=None if b_est is None else np.asarray(b_est, float)[keep],
        n_neighbours=0 if b_est is None else neighbours, blendedness_estimate=b_kind,
    )  # fmt: skip


def save_decoder_error(
    error: DecoderError, directory: str | os.PathLike, name: str | None = None
) -> dict:
    """Write ``directory/decoder_error.safetensors`` (``refined_error.safetensors`` for a
    calibration, or ``name``; temporary file, then rename); returns the summary that goes into
    the prior's ``config.json``."""
    name = name or (CALIBRATION_FILE if error.calibrated else FILE)
    path = Path(directory) / name
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    arrays = {"snr": error.snr, "flux_rel": error.flux_rel, "g": error.g}
    if error.blendedness is not None:
        arrays["blendedness"] = error.blendedness
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, str(tmp))
    publish(tmp, path)
    return {
        "file": name,
        "calibrated": error.calibrated,
        "n": int(len(error.snr)),
        "shape_channel": error.shape_channel,
        "n_bins": error.n_bins,
        "median_abs_flux_rel": [float(v) for v in np.median(np.abs(error.flux_rel), axis=0)],
        "median_abs_g": float(np.median(np.abs(error.g))),
        "by_snr_bin": error.by_snr_bin(),
        **(
            {
                "n_blend_bins": error.n_blend_bins,
                "n_neighbours": error.n_neighbours,
                "blend_weight": error.blend_weight,
                "blendedness": BLENDEDNESS_ESTIMATES[error.blendedness_estimate],
            }
            if error.blendedness is not None
            else {}
        ),
    }


def load_decoder_error(directory: str | os.PathLike, summary: dict) -> DecoderError:
    """The residuals :func:`save_decoder_error` wrote, with the ``summary`` it returned."""
    path = Path(directory) / summary["file"]
    try:
        arrays = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read {path}: {err}") from None
    blendedness = arrays.get("blendedness")
    labels = {label: kind for kind, label in BLENDEDNESS_ESTIMATES.items()}
    label = summary.get("blendedness", BLENDEDNESS_ESTIMATES["refined"])
    if label not in labels:
        raise ValueError(f"{path}: unknown blendedness estimate {label!r}")
    return DecoderError(
        arrays["snr"].astype(float), arrays["flux_rel"].astype(float), arrays["g"].astype(float),
        int(summary["shape_channel"]), int(summary["n_bins"]), bool(summary.get("calibrated")),
        None if blendedness is None else blendedness.astype(float),
        int(summary.get("n_blend_bins", 4)), int(summary.get("n_neighbours", 0)),
        float(summary.get("blend_weight", BLEND_WEIGHT)), labels[label],
    )  # fmt: skip
