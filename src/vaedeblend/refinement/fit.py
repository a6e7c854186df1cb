"""Fitting a model's latent prior on a dataset of isolated galaxies (``vaedeblend prior``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from vaedeblend.argtypes import check_positive
from vaedeblend.dataset import open_dataset
from vaedeblend.models.api import Model
from vaedeblend.refinement.decoder_error import (
    DecoderError,
    measure_decoder_error,
    measure_refined_error,
    r_channel,
    save_decoder_error,
)
from vaedeblend.refinement.joint import RefinedModel, RefineSettings
from vaedeblend.refinement.prior import PriorSettings, fit_prior, load_prior, save_prior

# isolated galaxies whose decoded flux and shape are compared with the truth: 4,000 put about
# 800 in each of the five S/N bins the posteriors draw the decoder's error from
DECODER_ERROR_GALAXIES = 4000
# simulated blends refined for the calibration: 2,000 put about 400 in each S/N bin, at
# 0.3-0.5 s per blend on one core (10-17 min)
CALIBRATION_BLENDS = 2000


def fit_model_prior(
    model: Model,
    data: str | os.PathLike,
    out: str | os.PathLike,
    limit: int | None = None,
    settings: PriorSettings | None = None,
    error_model: Model | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_limit: int = CALIBRATION_BLENDS,
    refine_settings: RefineSettings | None = None,
) -> dict:
    """Encode the isolated galaxies of ``data`` (the first ``limit``) with ``model``'s encoder,
    fit a :class:`~vaedeblend.refinement.prior.LatentPrior` to their latent means and write it
    to ``out`` with the decoder's own error on the first galaxies (:mod:`.decoder_error`, for
    the posteriors); returns the fit's report (held-out log-densities, nats per galaxy).

    ``error_model``: the model whose error is measured (default ``model``); give the deblender
    that refinement starts from (same decoder), whose error is the one the posteriors carry
    (with the deblender's, the 68 % intervals of 200 centred LSST blends held 68 % of true
    fluxes and 65 % of shapes; with the VAE's, 72 % and 52 %: RESULTS.md history).

    ``calibration``: simulated blends (``simulate --kind blended``) on whose first
    ``calibration_limit`` stamps the refined ``error_model`` is compared with the truth
    (:func:`~.decoder_error.measure_refined_error`): the posteriors then draw those residuals,
    bias included, instead of the decoder's isolated scatter. The calibration holds only for
    the refinement it was measured with: ``refine_settings`` (default ``RefineSettings()``)
    and ``error_model``'s weights are recorded with it, and the posteriors refuse any other
    (:func:`check_calibration`)."""
    error_model = error_model or model
    if error_model.decoder_fingerprint() != model.decoder_fingerprint():
        raise ValueError("the decoder's error must be measured with a model of the same decoder")
    blends = _calibration_set(calibration, error_model, calibration_limit) if calibration else None
    with open_dataset(data) as ds:
        if ds.meta.get("kind") != "isolated":
            raise ValueError(
                f"{data} holds {ds.meta.get('kind')!r} stamps; the prior is fitted on isolated "
                "galaxies (vaedeblend simulate --kind isolated)"
            )
        n = len(ds) if limit is None else min(limit, len(ds))
        stamps = ds.read("blend", slice(0, n))
        bands, fingerprint = ds.band_ids, ds.meta.get("fingerprint")
        m = min(n, DECODER_ERROR_GALAXIES)
        targets, snr = ds.read("target", slice(0, m)), ds.read("snr", slice(0, m))
    mu, _ = model.encode(stamps, bands=bands)
    prior, report = fit_prior(mu, settings or PriorSettings())
    order = [list(bands).index(b) for b in error_model.band_ids]
    channel = r_channel(error_model.band_ids)
    error = measure_decoder_error(
        error_model, stamps[:m][:, order], targets[:, order], snr, channel,
        float(error_model.config["pixel_scales_arcsec"][channel]),
    )  # fmt: skip
    refined_error = None
    if blends is not None:
        refined_error = measure_refined_error(
            RefinedModel(error_model, prior, refine_settings), blends[0], blends[1], channel,
            float(error_model.config["pixel_scales_arcsec"][channel]),
        )  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    error_summary = {
        **save_decoder_error(error, out), "model": _model_label(error_model),
        "model_fingerprint": error_model.fingerprint(),
    }  # fmt: skip
    calibration_summary = None
    if refined_error is not None:
        calibration_summary = _calibration_summary(
            refined_error, out, error_model, calibration, blends[2], refine_settings
        )
    fitted_on = {
        "model": _model_label(model), "data": os.fspath(data), "data_fingerprint": fingerprint,
        "n": int(n), "latents": "encoder means of the noisy isolated stamps",
    }  # fmt: skip
    save_prior(prior, out, decoder_fingerprint=model.decoder_fingerprint(),
               fitted_on=fitted_on, report=report, decoder_error=error_summary,
               refined_error=calibration_summary)  # fmt: skip
    return report


def calibrate_prior(
    model: Model,
    prior_dir: str | os.PathLike,
    calibration: str | os.PathLike,
    out: str | os.PathLike,
    calibration_limit: int = CALIBRATION_BLENDS,
    refine_settings: RefineSettings | None = None,
    add: bool = False,
) -> dict:
    """Measure a new calibration on the simulated blends ``calibration`` for the prior in
    ``prior_dir`` (fitted on ``model``'s decoder; ``model``: the deblender refinement starts
    from) and write the prior with it to ``out`` (may be ``prior_dir``): the flow and the
    decoder's isolated error are kept as they are; ``refine_settings``: the refinement
    measured (default ``RefineSettings()``). ``add``: keep the prior's calibrations and add
    this one for its refinement setting (replacing one measured with the same deblender and
    setting); otherwise it replaces them all. Returns the calibration's summary."""
    prior = load_prior(prior_dir, model.decoder_fingerprint())
    settings = refine_settings or RefineSettings()
    kept = _calibrations_kept(prior, model, settings) if add else []
    blends = _calibration_set(calibration, model, calibration_limit)
    channel = r_channel(model.band_ids)
    refined_error = measure_refined_error(
        RefinedModel(model, prior, refine_settings), blends[0], blends[1], channel,
        float(model.config["pixel_scales_arcsec"][channel]),
    )  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    error_summary = prior.config.get("decoder_error")
    same_dir = Path(out).resolve() == Path(prior_dir).resolve()
    for summary in [error_summary] * bool(error_summary) + kept:
        if not same_dir:
            shutil.copyfile(Path(prior_dir) / summary["file"], Path(out) / summary["file"])
    # the main calibration stays the main one; an added one gets a file named by its settings
    name = f"refined_error_{_settings_key(model, settings)}.safetensors" if kept else None
    summary = _calibration_summary(
        refined_error, out, model, calibration, blends[2], settings, name
    )
    main, more = (kept[0], kept[1:] + [summary]) if kept else (summary, [])
    config = prior.config
    save_prior(prior, out, decoder_fingerprint=config["decoder_fingerprint"],
               fitted_on=config["fitted_on"], report=config["report"],
               decoder_error=error_summary, refined_error=main,
               more_calibrations=more)  # fmt: skip
    return summary


def _calibrations_kept(prior, model: Model, settings: RefineSettings) -> list[dict]:
    """The summaries of ``prior``'s calibrations, main one first, less any measured with
    ``model`` and ``settings`` (which a new one replaces)."""
    kept = []
    for summary, _ in prior.calibrations:
        try:
            check_calibration(summary, model, settings)
        except ValueError:
            kept.append(summary)
    return kept


def _settings_key(model: Model, settings: RefineSettings) -> str:
    """12 hex digits naming a calibration's file by its deblender and refinement setting."""
    text = json.dumps([model.fingerprint(), dataclasses.asdict(settings)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _calibration_summary(refined_error, out, model: Model, data, fingerprint, settings,
                         name: str | None = None) -> dict:  # fmt: skip
    """Write the calibration's residuals into ``out`` (file ``name``, default
    ``refined_error.safetensors``); its summary for the prior's config, with what it was
    measured with: the deblender's weights and the refinement settings."""
    return {
        **save_decoder_error(refined_error, out, name), "model": _model_label(model),
        "model_fingerprint": model.fingerprint(),
        "data": os.fspath(data), "data_fingerprint": fingerprint,
        "refined": dataclasses.asdict(settings or RefineSettings()),
    }  # fmt: skip


def select_calibration(prior, model: Model, settings: RefineSettings) -> DecoderError:
    """The prior's calibration measured with ``model`` refined with ``settings`` (a prior may
    hold one per refinement setting); refuses, as :func:`check_calibration` words it for the
    main one, when none was."""
    for summary, error in prior.calibrations[1:]:
        try:
            check_calibration(summary, model, settings)
        except ValueError:
            continue
        return error
    try:
        check_calibration(prior.config["refined_error"], model, settings)
    except ValueError as err:
        held = [_as_flags(summary.get("refined")) for summary, _ in prior.calibrations]
        if "other refinement settings" not in str(err) or None in held:
            raise
        held = ", ".join(dict.fromkeys(held))  # data_flux_fit has no flag: "share" repeats
        raise ValueError(
            "the prior holds no calibration for these refinement settings, only for "
            f"(--central-prior/--flux-from-data/--pixels-from-data) {held}; add one: vaedeblend "
            "prior --keep-flow PRIOR --calibrate-on BLENDS.h5 --add-calibration"
        ) from None
    return prior.refined_error


def _as_flags(recorded) -> str | None:
    """A calibration's recorded settings as the values of --central-prior, --flux-from-data and
    --pixels-from-data, e.g. "fixed/0.05/0.1" (None: unrecorded; "+flux-sigma" if set)."""
    if not isinstance(recorded, dict):
        return None
    full = {**dataclasses.asdict(RefineSettings()), **RefineSettings.BEFORE_ADDED, **recorded}
    values = [full["central_prior"], full["flux_from_data"] or 0, full["pixels_from_data"] or 0]
    text = "/".join(f"{v:g}" if not isinstance(v, str) else v for v in values)
    return text + (f" (+flux-sigma {full['flux_sigma']:g})" if full["flux_sigma"] else "")


def check_calibration(summary: dict, model: Model, settings: RefineSettings) -> None:
    """Refuse a calibration (``summary``: a prior config's ``refined_error``) measured with
    another deblender or other refinement settings than ``model`` refined with ``settings``:
    its residuals would describe another estimate's errors."""
    fix = (
        "re-measure it: vaedeblend prior --model MODEL --keep-flow PRIOR --calibrate-on BLENDS.h5"
        " [--central-prior ...] [--flux-sigma ...]"
    )
    if summary.get("model_fingerprint") != model.fingerprint():
        recorded = "another deblender" if "model_fingerprint" in summary else "an unrecorded model"
        raise ValueError(
            f"the prior's calibration was measured with {recorded} ({summary.get('model')}), "
            f"not {model.path}; {fix}"
        )
    recorded = summary.get("refined")
    wanted = dataclasses.asdict(settings)
    if isinstance(recorded, dict):
        # a setting added to RefineSettings after the calibration was measured was not there
        # to change: it ran as the code did before the setting existed (BEFORE_ADDED), else
        # as the setting's default (such settings come switched off)
        before = {**dataclasses.asdict(RefineSettings()), **RefineSettings.BEFORE_ADDED}
        recorded = {**{k: before[k] for k in wanted if k not in recorded}, **recorded}
        if wanted["flux_from_data"] is None and recorded.get("flux_from_data") is None:
            recorded = {**recorded, "data_flux_fit": wanted["data_flux_fit"]}  # unused by both
    if recorded != wanted:
        differ = (
            sorted(k for k in wanted if recorded.get(k) != wanted[k])
            if isinstance(recorded, dict)
            else ["unrecorded"]
        )
        raise ValueError(
            f"the prior's calibration was measured with other refinement settings "
            f"({', '.join(differ)}); {fix}"
        )


def check_decoder_error(summary: dict, model: Model) -> None:
    """Refuse the decoder's isolated error (``summary``: a prior config's ``decoder_error``)
    measured with another model than ``model``: its scatter is that model's encoder and
    decoder's, not this one's (deblenders share the decoder, not the encoder)."""
    if summary.get("model_fingerprint") == model.fingerprint():
        return
    recorded = "another model" if "model_fingerprint" in summary else "an unrecorded model"
    raise ValueError(
        f"the prior's decoder error was measured with {recorded} ({summary.get('model')}), "
        f"not {model.path}; re-fit it (vaedeblend prior --model MODEL --data ISOLATED.h5) or "
        "give the prior a calibration for this model (--keep-flow PRIOR --calibrate-on BLENDS.h5)"
    )


def _calibration_set(data, model: Model, limit: int):
    """(blends, targets, fingerprint) of the first ``limit`` stamps of ``data`` in ``model``'s
    band order; refuses a set of isolated galaxies or without the model's bands."""
    check_positive("calibration_limit", limit)
    with open_dataset(data) as ds:
        if ds.meta.get("kind") != "blended":
            raise ValueError(
                f"{data} holds {ds.meta.get('kind')!r} stamps; the calibration is measured on "
                "blends (vaedeblend simulate --kind blended)"
            )
        missing = [b for b in model.band_ids if b not in ds.band_ids]
        if missing:
            raise ValueError(f"{data} lacks the model's bands {missing}")
        order = [list(ds.band_ids).index(b) for b in model.band_ids]
        n = min(limit, len(ds))
        blends = ds.read("blend", slice(0, n))[:, order]
        targets = ds.read("target", slice(0, n))[:, order]
        return np.ascontiguousarray(blends), targets, ds.meta.get("fingerprint")


def default_prior_dir(model: Model) -> Path:
    """Where a model's prior lives by default: ``prior/`` beside its directory (a shipped
    model ``pretrained/NAME/deblender`` -> ``pretrained/NAME/prior``)."""
    return Path(model.path).resolve().parent / "prior"


def prior_fingerprint_ok(model: Model, prior_dir: Path) -> bool:
    """Whether ``prior_dir`` holds a prior fitted on ``model``'s decoder."""
    import json

    try:
        config = json.loads((prior_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("decoder_fingerprint") == model.decoder_fingerprint()


def _model_label(model: Model) -> str:
    """A shipped model's ``pretrained/NAME/PART``, else its path as given."""
    parts = Path(model.path).resolve().parts
    return "/".join(parts[-3:]) if "pretrained" in parts[-3:-2] else model.path
