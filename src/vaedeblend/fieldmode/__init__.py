"""Field mode: detect and deblend every galaxy of a multi-band, multi-instrument image.

>>> from vaedeblend.fieldmode import deblend_field          # doctest: +SKIP
>>> result = deblend_field(["lsst_r.fits", ...], "lsst", out="deblended")  # doctest: +SKIP
>>> result.catalog["flux_lsst_r", "e1", "e2", "blendedness"]  # doctest: +SKIP

See docs/field_mode.md for the method, the inputs, the outputs and the catalog columns.
"""

from vaedeblend.fieldmode.catalog import FLAGS
from vaedeblend.fieldmode.detection import DetectionSettings
from vaedeblend.fieldmode.inputs import (
    BandImage,
    FieldImages,
    FieldInputError,
    from_arrays,
    read_fits,
)
from vaedeblend.fieldmode.region import DeblendSettings
from vaedeblend.fieldmode.run import FieldResult, deblend_field

__all__ = [
    "FLAGS",
    "BandImage",
    "DeblendSettings",
    "DetectionSettings",
    "FieldImages",
    "FieldInputError",
    "FieldResult",
    "deblend_field",
    "from_arrays",
    "read_fits",
]
