"""Evaluation of deblenders: shape and flux errors, biases, binned statistics, reports.

Main entry points:

* ``evaluate_arrays`` (report.py): (N, C, H, W) arrays in electrons -> metrics.json,
  summary.md, per_galaxy.npz and PNG figures.
* ``evaluate_dataset`` (from_files.py): a test-set file plus outputs (array or HDF5 file).
* ``compare_runs`` (compare.py): several metrics.json side by side.
* ``ellipticity_bias`` and ``shear_bias`` (bias.py): the two kinds of m, kept apart.
"""

from vaedeblend.evaluation.bias import (
    BiasResult,
    LinearBias,
    ShearBias,
    ellipticity_bias,
    linear_fit,
    shear_bias,
    shear_bias_from_images,
)
from vaedeblend.evaluation.binned import (
    binned_bias,
    binned_stats,
    error_summary,
    paper_binned_statistic,
)
from vaedeblend.evaluation.compare import compare_runs, load_metrics
from vaedeblend.evaluation.from_files import evaluate_dataset, load_deblended
from vaedeblend.evaluation.report import EvalConfig, EvalData, evaluate_arrays, evaluate_data

__all__ = [
    "BiasResult",
    "EvalConfig",
    "EvalData",
    "LinearBias",
    "ShearBias",
    "binned_bias",
    "binned_stats",
    "compare_runs",
    "ellipticity_bias",
    "error_summary",
    "evaluate_arrays",
    "evaluate_data",
    "evaluate_dataset",
    "linear_fit",
    "load_deblended",
    "load_metrics",
    "paper_binned_statistic",
    "shear_bias",
    "shear_bias_from_images",
]
