"""The interface every galaxy catalog implements, and the table check run before any drawing."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from vaedeblend.galaxy import Galaxy


class GalaxyCatalog(abc.ABC):
    """A list of galaxies, each turned into a :class:`vaedeblend.galaxy.Galaxy` on demand.

    Subclasses set ``name`` (the source: ``synthetic``, ``cosmos``, ``catsim``, ``real``) and
    ``mag_f814w`` (numpy array, HST/ACS F814W AB magnitude of every row, same order as
    :meth:`galaxy`), and implement :meth:`_make_galaxy`.
    """

    name: str = "catalog"
    mag_f814w: np.ndarray

    def __len__(self) -> int:
        return int(len(self.mag_f814w))

    def galaxy(self, row: int) -> Galaxy:
        """The galaxy of ``row`` (0-based; negative rows count from the end)."""
        return self._make_galaxy(self._check_row(row))

    def galaxies(self, rows: Iterable[int]) -> list[Galaxy]:
        return [self.galaxy(r) for r in rows]

    def describe(self) -> dict:
        """A small JSON-able description (stored in dataset metadata)."""
        return {"source": self.name, "n": len(self)}

    @abc.abstractmethod
    def _make_galaxy(self, row: int) -> Galaxy:
        """Build the galaxy of a valid, non-negative ``row``."""

    def _check_row(self, row: int) -> int:
        n = len(self)
        row = int(row)
        if not -n <= row < n:
            raise IndexError(f"{self.name} catalog row {row} out of range (catalog has {n} rows)")
        return row % n

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self)} galaxies>"


def _column_names(table) -> list[str]:
    """Column names of an astropy Table, a FITS record array, a structured array or a dict."""
    if hasattr(table, "colnames"):
        return list(table.colnames)
    dtype = getattr(table, "dtype", None)
    if dtype is not None and dtype.names is not None:
        return list(dtype.names)
    if isinstance(table, Mapping):
        return list(table.keys())
    raise TypeError(f"cannot read column names from a {type(table).__name__}")


def _rows_any(mask: np.ndarray) -> np.ndarray:
    """Reduce a per-element mask of a (possibly vector-valued) column to one flag per row."""
    mask = np.asarray(mask, dtype=bool)
    return mask.reshape(len(mask), -1).any(axis=1) if mask.ndim > 1 else mask


def _plural(n: int) -> str:
    return f"{n} row is" if n == 1 else f"{n} rows are"


def validate_table(
    table,
    required_columns: Iterable[str],
    name: str,
    *,
    positive: Iterable[str] = (),
    nonnegative: Iterable[str] = (),
    checks: Iterable[tuple[str, Callable[[object], np.ndarray]]] = (),
) -> None:
    """Check a catalog table before any galaxy is drawn; raise ``ValueError`` listing every problem.

    Args:
        table: astropy Table, FITS record array, structured numpy array or dict of arrays.
        required_columns: columns that must exist and hold only finite numbers (vector columns
            such as COSMOS ``sersicfit`` count a row as bad when any element is).
        name: catalog name used in the messages, e.g. ``"catsim"``.
        positive: columns whose values must be > 0 (sizes, fluxes).
        nonnegative: columns whose values must be >= 0 (redshifts, flux fractions).
        checks: extra ``(description, function(table) -> bad-row mask)`` tests, for conditions
            spanning several columns (e.g. zero total flux).

    The message names each bad column and how many rows are bad, e.g.
    ``"catsim catalog column 'a_d': 3 rows are NaN"``.
    """
    required = list(required_columns)
    present = set(_column_names(table))
    missing = [c for c in required if c not in present]
    if missing:
        listed = ", ".join(repr(c) for c in missing)
        raise ValueError(
            f"{name} catalog is missing column(s) {listed}; it has {', '.join(sorted(present))}"
        )
    problems = []
    for column in required:
        values = np.asarray(table[column])
        if not np.issubdtype(values.dtype, np.number):
            continue
        values = values.astype(float)
        n_nan = int(_rows_any(np.isnan(values)).sum())
        n_inf = int(_rows_any(np.isinf(values)).sum())
        if n_nan:
            problems.append(f"column {column!r}: {_plural(n_nan)} NaN")
        if n_inf:
            problems.append(f"column {column!r}: {_plural(n_inf)} infinite")
        with np.errstate(invalid="ignore"):
            if column in positive:
                n_bad = int(_rows_any(values <= 0).sum())
                if n_bad:
                    problems.append(f"column {column!r}: {_plural(n_bad)} <= 0 (must be > 0)")
            if column in nonnegative:
                n_bad = int(_rows_any(values < 0).sum())
                if n_bad:
                    problems.append(f"column {column!r}: {_plural(n_bad)} < 0 (must be >= 0)")
    for description, function in checks:
        with np.errstate(invalid="ignore", divide="ignore"):
            n_bad = int(_rows_any(function(table)).sum())
        if n_bad:
            problems.append(f"{_plural(n_bad)} non-physical: {description}")
    if problems:
        raise ValueError(f"{name} catalog " + "; ".join(problems))
