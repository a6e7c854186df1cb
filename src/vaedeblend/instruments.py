"""Instruments and presets: which bands are simulated, at which depth, with which PSFs.

A :class:`Setup` is the ordered list of channels (see ``docs/contracts.md`` for the order) and the
stamp size shared by all of them. Two presets exist:

- ``paper``: the numbers of Arcelin et al. (2021) read from their code (``paper_setup.md``),
  without their two bugs (VIS drawn through the NISP Y curve; H and Y skies swapped).
- ``survey``: current values from ``surveycodex`` (LSST 10-year depth, per-band PSF FWHM;
  Euclid wide survey = 4 exposures of surveycodex's single-exposure time).

Any survey ``surveycodex`` knows can be added by name (``hsc``, ``des``, ``roman_wfi``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import surveycodex

from vaedeblend.bands import Band, PSFSpec

PAPER_LSST = {
    # filter: (zeropoint AB mag for 1 e-/s, sky mag/arcsec^2, number of 15 s visits)
    "u": (26.50, 22.95, 56),
    "g": (28.30, 22.24, 80),
    "r": (28.13, 21.20, 184),
    "i": (27.79, 20.47, 184),
    "z": (27.40, 19.60, 160),
    "y": (26.58, 18.63, 160),
}
PAPER_EUCLID = {
    # band: (zeropoint, sky mag/arcsec^2, pixel scale arcsec, PSF FWHM arcsec, speclite name)
    "vis": (25.58, 22.35, 0.1, 0.18, "Euclid-VIS"),
    "y": (24.25, 22.98, 0.3, 0.22, "Euclid-Y"),
    "j": (24.29, 22.94, 0.3, 0.22, "Euclid-J"),
    "h": (24.92, 22.30, 0.3, 0.22, "Euclid-H"),
}
PAPER_EUCLID_EXPOSURE_S = 4 * 450.0
PAPER_LSST_VISIT_S = 15.0

# surveycodex survey name -> (band id namespace, filter name -> (band suffix, bandpass source),
#                             PSF kind, number of single exposures in the survey preset)
SURVEYS = {
    "lsst": ("LSST", "lsst", {f: (f, f"galsim:LSST_{f}.dat") for f in "ugrizy"}, "kolmogorov", 1),
    "euclid_vis": ("Euclid_VIS", "euclid", {"IE": ("vis", "speclite:Euclid-VIS")}, "moffat", 4),
    "euclid_nisp": (
        "Euclid_NISP",
        "euclid",
        {b + "E": (b.lower(), f"speclite:Euclid-{b}") for b in "YJH"},
        "moffat",
        4,
    ),
    "hsc": ("HSC", "hsc", {f: (f, f"speclite:hsc2017-{f}") for f in "grizy"}, "kolmogorov", 1),
    "des": (
        "DES",
        "des",
        {f: (f.lower(), f"speclite:decam2014-{f}") for f in "grizY"},
        "kolmogorov",
        1,
    ),
    "sdss": ("SDSS", "sdss", {f: (f, f"speclite:sdss2010-{f}") for f in "ugriz"}, "kolmogorov", 1),
    "panstarrs": (
        "PanSTARRS",
        "panstarrs",
        {f: (f, f"speclite:panstarrs-{f}") for f in "grizyw"},
        "kolmogorov",
        1,
    ),
    "cfhtls": (
        "CFHTLS",
        "cfhtls",
        {f: (f, f"speclite:cfht_megacam-{f}") for f in "ugriz"},
        "kolmogorov",
        1,
    ),
    "roman_wfi": (
        "Roman_WFI",
        "roman",
        {
            "F106": ("f106", "galsim-roman:Y106"),
            "F129": ("f129", "galsim-roman:J129"),
            "F158": ("f158", "galsim-roman:H158"),
        },
        "moffat",
        1,
    ),
    "cosmos": ("COSMOS", "hst", {"f814w": ("f814w", "galsim:ACS_wfc_F814W.dat")}, "moffat", 1),
}
# Instrument groups users name on the command line.
GROUPS = {
    "lsst": ["lsst"],
    "euclid": ["euclid_vis", "euclid_nisp"],
    "lsst+euclid": ["lsst", "euclid"],
}

DEFAULT_STAMP_SIZE_PIXELS = 64


@dataclass(frozen=True)
class Setup:
    """The simulated channels, in order, and the stamp size (pixels, same for every channel)."""

    preset: str
    bands: tuple[Band, ...]
    stamp_size_pixels: int = DEFAULT_STAMP_SIZE_PIXELS

    @property
    def band_ids(self) -> list[str]:
        return [b.band_id for b in self.bands]

    @property
    def n_channels(self) -> int:
        return len(self.bands)

    def band(self, band_id: str) -> Band:
        for b in self.bands:
            if b.band_id == band_id:
                return b
        raise KeyError(f"band {band_id!r} is not in this setup ({', '.join(self.band_ids)})")

    def index(self, band_id: str) -> int:
        return self.band_ids.index(self.band(band_id).band_id)

    @property
    def reference_band_id(self) -> str:
        """The band that ranks galaxies, finds peaks and defines S/N: LSST r when present."""
        return "lsst_r" if "lsst_r" in self.band_ids else self.band_ids[len(self.bands) // 2]

    def to_json(self) -> str:
        return json.dumps(
            {
                "preset": self.preset,
                "stamp_size_pixels": self.stamp_size_pixels,
                "bands": [b.to_dict() for b in self.bands],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Setup:
        d = json.loads(text)
        bands = tuple(Band.from_dict(b) for b in d["bands"])
        return cls(preset=d["preset"], bands=bands, stamp_size_pixels=d["stamp_size_pixels"])


def _paper_lsst() -> list[Band]:
    psf = PSFSpec("kolmogorov", 0.65)
    return [
        Band(f"lsst_{f}", 0.2, zp, sky, visits * PAPER_LSST_VISIT_S, psf, f"galsim:LSST_{f}.dat")
        for f, (zp, sky, visits) in PAPER_LSST.items()
    ]


def _paper_euclid() -> list[Band]:
    return [
        Band(
            f"euclid_{b}",
            scale,
            zp,
            sky,
            PAPER_EUCLID_EXPOSURE_S,
            PSFSpec("moffat", fwhm, beta=2.5),
            f"speclite:{curve}",
        )
        for b, (zp, sky, scale, fwhm, curve) in PAPER_EUCLID.items()
    ]


def survey_bands(name: str) -> list[Band]:
    """Bands of one ``surveycodex`` survey (``lsst``, ``hsc``, ...) at survey depth."""
    key = name.lower()
    if key not in SURVEYS:
        raise ValueError(f"unknown survey {name!r}; known: {', '.join(sorted(SURVEYS))}")
    codex_name, namespace, filters, psf_kind, n_exposures = SURVEYS[key]
    survey = surveycodex.get_survey(codex_name)
    pixel_scale = float(survey.pixel_scale.to_value("arcsec"))
    bands = []
    for codex_filter, (suffix, bandpass_source) in filters.items():
        f = survey.get_filter(codex_filter)
        bands.append(
            Band(
                band_id=f"{namespace}_{suffix}",
                pixel_scale_arcsec=pixel_scale,
                zeropoint_mag=float(f.zeropoint.to_value("mag")),
                sky_mag_arcsec2=float(f.sky_brightness.value),
                exposure_s=float(f.full_exposure_time.to_value("s")) * n_exposures,
                psf=PSFSpec(psf_kind, float(f.psf_fwhm.to_value("arcsec"))),
                bandpass_source=bandpass_source,
            )
        )
    return bands


def band_at_depth(band_id: str, preset: str | None = None) -> Band:
    """The definition (zero point, exposure, sky) of ``band_id`` in ``preset``.

    ``preset`` None: ``paper`` for LSST and Euclid bands (what the shipped LSST and LSST + Euclid
    models were trained on), else ``survey`` (``hsc_r``: HSC wide depth from surveycodex).
    """
    if preset is None:
        preset = "paper" if band_id.startswith(("lsst_", "euclid_")) else "survey"
    if preset == "paper":
        candidates = make_setup("paper", "lsst+euclid").bands
    elif preset == "survey":
        candidates = tuple(b for name in SURVEYS for b in survey_bands(name))
    else:
        raise ValueError(f"unknown preset {preset!r}; known: paper, survey")
    for band in candidates:
        if band.band_id == band_id:
            return band
    raise ValueError(f"band {band_id!r} is not in the {preset!r} preset")


def _expand(instruments: str) -> list[str]:
    names = []
    for part in instruments.lower().split("+"):
        names.extend(GROUPS.get(part, [part]))
    return names


def make_setup(
    preset: str = "paper",
    instruments: str = "lsst+euclid",
    stamp_size_pixels: int = DEFAULT_STAMP_SIZE_PIXELS,
) -> Setup:
    """Build the channels for ``preset`` (``paper`` or ``survey``) and ``instruments``.

    ``instruments`` joins names with ``+``: ``lsst``, ``euclid``, ``lsst+euclid``, ``hsc``,
    ``lsst+roman_wfi``, ... The ``paper`` preset knows only LSST and Euclid.
    """
    names = _expand(instruments)
    bands: list[Band] = []
    for name in names:
        if preset == "paper":
            if name == "lsst":
                bands += _paper_lsst()
            elif name in ("euclid_vis", "euclid_nisp"):
                bands += [
                    b
                    for b in _paper_euclid()
                    if (b.band_id == "euclid_vis") == (name == "euclid_vis")
                ]
            else:
                raise ValueError(
                    f"the 'paper' preset has LSST and Euclid only, not {name!r}; "
                    "use --preset survey"
                )
        elif preset == "survey":
            bands += survey_bands(name)
        else:
            raise ValueError(f"unknown preset {preset!r} (paper, survey)")
    if stamp_size_pixels < 8:
        raise ValueError(f"stamp size {stamp_size_pixels} pixels is too small (at least 8)")
    return Setup(preset=preset, bands=tuple(bands), stamp_size_pixels=stamp_size_pixels)
