"""Beyond one forward pass: a learned prior on the latent space (:mod:`.prior`), galaxies placed
on each band's grid (:mod:`.placement`) and the joint refinement of all galaxies of a stamp
(:mod:`.joint`), a :class:`~vaedeblend.models.api.Deblender` wrapping a trained model.

>>> from vaedeblend import load_pretrained                   # doctest: +SKIP
>>> model = refined(load_pretrained("lsst"))                # its shipped prior  # doctest: +SKIP
>>> central = model.deblend(stamps, bands=model.band_ids)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from vaedeblend.models.api import Model
from vaedeblend.refinement.fit import default_prior_dir, fit_model_prior
from vaedeblend.refinement.joint import (
    FIELD_REFINEMENT,
    STAMP_REFINEMENT,
    GalaxyPositions,
    RefinedModel,
    RefinementResult,
    RefineSettings,
)
from vaedeblend.refinement.posterior import PosteriorRefinedModel
from vaedeblend.refinement.prior import LatentPrior, PriorSettings, fit_prior, load_prior


def refined(
    model: Model,
    prior: str | os.PathLike | None = None,
    settings: RefineSettings | None = None,
    posterior: bool = False,
) -> RefinedModel:
    """``model`` refined under the latent prior in directory ``prior`` (default: ``prior/``
    beside the model's directory, where shipped models keep theirs). ``posterior``: a
    :class:`~.posterior.PosteriorRefinedModel`, which also gives posterior quantiles."""
    prior_dir = Path(prior) if prior is not None else default_prior_dir(model)
    if not (prior_dir / "config.json").is_file():
        raise ValueError(
            f"no latent prior at {prior_dir}: fit one with 'vaedeblend prior --model MODEL "
            "--data ISOLATED.h5 --out DIR' and give its DIR"
        )
    kind = PosteriorRefinedModel if posterior else RefinedModel
    return kind(model, load_prior(prior_dir, model.decoder_fingerprint()),
                settings or RefineSettings())  # fmt: skip


__all__ = [
    "FIELD_REFINEMENT", "STAMP_REFINEMENT",
    "GalaxyPositions", "LatentPrior", "PosteriorRefinedModel", "PriorSettings",
    "RefineSettings", "RefinedModel", "RefinementResult",
    "fit_model_prior", "fit_prior", "load_prior", "refined",
]  # fmt: skip
