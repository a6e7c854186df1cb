"""Field mode: detect and deblend every galaxy of a multi-band, multi-instrument image.

>>> from vaedeblend.fieldmode import Execution, deblend_field, make_settings, read_fits
>>> images = read_fits(["lsst_r.fits", ...])  # doctest: +SKIP
>>> result = deblend_field(images, "lsst", settings=make_settings(max_iterations=2),
...                        execution=Execution(workers=2), out="deblended")  # doctest: +SKIP
>>> result.catalog["flux_lsst_r", "e1", "e2", "blendedness"]  # doctest: +SKIP

See docs/field_mode.md for the method, the inputs, the outputs and the catalog columns.
"""

from vaedeblend.fieldmode.catalog import FLAGS
from vaedeblend.fieldmode.detection import DetectionSettings
from vaedeblend.fieldmode.execution import Execution
from vaedeblend.fieldmode.inputs import (
    BandImage,
    FieldImages,
    FieldInputError,
    apply_image_zeropoint,
    from_arrays,
    read_fits,
)
from vaedeblend.fieldmode.region import DeblendSettings
from vaedeblend.fieldmode.run import FieldResult, deblend_field, make_settings

__all__ = [
    "FLAGS",
    "BandImage",
    "DeblendSettings",
    "DetectionSettings",
    "Execution",
    "FieldImages",
    "FieldInputError",
    "FieldResult",
    "apply_image_zeropoint",
    "deblend_field",
    "from_arrays",
    "make_settings",
    "read_fits",
]
