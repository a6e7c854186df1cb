"""Simulating a dataset: shards drawn in parallel with Dask, merged into one HDF5 file.

Shard ``k`` holds samples ``k * shard_size`` to ``(k + 1) * shard_size - 1``; each is written to
a temporary name then renamed, so a killed run restarted with the same arguments finds only
complete shards, draws the rest, and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaedeblend._version import __version__
from vaedeblend.argtypes import check_positive
from vaedeblend.dataset import merge_shards, remove_parts, write_h5
from vaedeblend.execution import local_client
from vaedeblend.instruments import Setup
from vaedeblend.simulation.blends import BlendConfig, SampleMaker, stamp_statistics
from vaedeblend.simulation.render import psf_images

# The five shear-calibration sets (label -> (g1, g2)), same galaxies and noise in each.
CALIBRATION_SHEARS = {
    "g0": (0.0, 0.0),
    "g1p": (0.01, 0.0),
    "g1m": (-0.01, 0.0),
    "g2p": (0.0, 0.01),
    "g2m": (0.0, -0.01),
}


def calibration_path(out: str | Path, label: str) -> Path:
    """The file of calibration set ``label`` for ``--out OUT``: ``OUT_<label>.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_{label}{out.suffix or '.h5'}")


@dataclass(frozen=True)
class CatalogSpec:
    """Which catalog to draw galaxies from (see ``vaedeblend.catalogs.load_catalog``)."""

    source: str = "synthetic"
    path: str | None = None
    seed: int = 0
    size: int = 100_000
    mag_limit_f814w: float = 25.2


@dataclass(frozen=True)
class SimSpec:
    """Everything that defines a dataset's content (its fingerprint is the hash of this)."""

    setup_json: str
    catalog: CatalogSpec
    config: BlendConfig
    n: int
    seed: int
    store_neighbours: bool = False

    @property
    def setup(self) -> Setup:
        return Setup.from_json(self.setup_json)

    def to_dict(self) -> dict:
        return {
            "setup": json.loads(self.setup_json),
            "catalog": dataclasses.asdict(self.catalog),
            "config": dataclasses.asdict(self.config),
            "n": self.n,
            "seed": self.seed,
            "store_neighbours": self.store_neighbours,
        }

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def _sample_maker(spec: SimSpec) -> SampleMaker:
    """One SampleMaker per worker process and spec (catalog loading is the slow part)."""
    from vaedeblend.catalogs import load_catalog

    c = spec.catalog
    catalog = load_catalog(
        c.source, c.path, seed=c.seed, n=c.size, mag_limit_f814w=c.mag_limit_f814w
    )
    return SampleMaker(spec.setup, catalog, spec.config)


def truth_dtype(band_ids: list[str]) -> np.dtype:
    fields = [
        ("blend_index", "i8"),
        ("is_target", "?"),
        ("x_pixel", "f8"),
        ("y_pixel", "f8"),
        ("dx_arcsec", "f8"),
        ("dy_arcsec", "f8"),
    ]
    fields += [(f"flux_{b}", "f8") for b in band_ids] + [(f"mag_{b}", "f8") for b in band_ids]
    fields += [
        ("e1", "f8"),
        ("e2", "f8"),
        ("hlr_arcsec", "f8"),
        ("redshift", "f8"),
        ("sersic_n", "f8"),
        ("bulge_fraction", "f8"),
        ("catalog_row", "i8"),
    ]
    return np.dtype(fields)


def _truth_rows(sample, index: int, maker: SampleMaker) -> list[tuple]:
    setup = maker.setup
    ref_scale = setup.bands[maker.ref].pixel_scale_arcsec
    centre = (setup.stamp_size_pixels - 1) / 2
    rows = []
    for k, (g, p, e) in enumerate(
        zip(sample.galaxies, sample.placements, sample.electrons, strict=True)
    ):
        mags = [b.electrons_to_mag(x) for b, x in zip(setup.bands, e, strict=True)]
        e1, e2 = g.ellipticity(p.rotation_deg, p.shear)
        rows.append(
            (
                index,
                k == 0,
                centre + p.dx_arcsec / ref_scale,
                centre + p.dy_arcsec / ref_scale,
                p.dx_arcsec,
                p.dy_arcsec,
                *e,
                *mags,
                e1,
                e2,
                g.hlr_arcsec,
                g.redshift,
                g.sersic_n,
                g.bulge_fraction,
                g.source_row,
            )
        )
    return rows


def simulate_shard(spec: SimSpec, start: int, stop: int, path: str) -> dict:
    """Draw samples [start, stop) and write them to ``path`` atomically; return counts."""
    maker = _sample_maker(spec)
    setup = spec.setup
    samples = [maker.make(spec.seed, i) for i in range(start, stop)]
    sky_ref = setup.bands[maker.ref].sky_level_electrons
    stats = [stamp_statistics(s, maker.ref, sky_ref) for s in samples]
    arrays = {
        "blend": np.stack([s.blend for s in samples]),
        "target": np.stack([s.target for s in samples]),
        "others": np.stack([s.others for s in samples]).astype(np.float32),
        "snr": np.array([s["snr"] for s in stats]),
        "blendedness": np.array([s["blendedness"] for s in stats]),
        "blendedness_closest": np.array([s["blendedness_closest"] for s in stats]),
        "n_sources": np.array([1 + len(s.neighbours) for s in samples], dtype=np.int64),
        "detected": np.array([s.detected for s in samples]),
        "noise_seed": np.array([s.noise_seed for s in samples], dtype=np.uint64),
        "truth": np.array(
            [
                row
                for i, s in zip(range(start, stop), samples, strict=True)
                for row in _truth_rows(s, i, maker)
            ],
            dtype=truth_dtype(setup.band_ids),
        ),
    }
    if spec.store_neighbours:
        arrays["neighbours"] = np.stack(
            [_pad_neighbours(s, spec.config.max_sources - 1) for s in samples]
        )
    counts = {k: sum(s.attempts[k] for s in samples) for k in ("no_peak", "close")}
    write_h5(Path(path), arrays, {"counts": json.dumps(counts), "fingerprint": spec.fingerprint})
    return counts


def _pad_neighbours(sample, slots: int) -> np.ndarray:
    out = np.zeros((max(slots, 1), *sample.target.shape), dtype=np.float32)
    for k, image in enumerate(sample.neighbours):
        out[k] = image
    return out


def dataset_meta(spec: SimSpec, counts: dict) -> dict:
    setup = spec.setup
    return {
        "band_ids": setup.band_ids,
        "pixel_scales_arcsec": [b.pixel_scale_arcsec for b in setup.bands],
        "sky_levels_electrons": [b.sky_level_electrons for b in setup.bands],
        "exposures_s": [b.exposure_s for b in setup.bands],
        "zeropoints_mag": [b.zeropoint_mag for b in setup.bands],
        "reference_band": setup.reference_band_id,
        "stamp_size_pixels": setup.stamp_size_pixels,
        "preset": setup.preset,
        "setup": json.loads(spec.setup_json),
        "kind": spec.config.kind,
        "centring": spec.config.centring,
        "noise": spec.config.noise,
        "shear": list(spec.config.shear),
        "config": dataclasses.asdict(spec.config),
        "catalog": dataclasses.asdict(spec.catalog),
        "seed": spec.seed,
        "n": spec.n,
        "n_no_peak": counts["no_peak"],
        "n_rejected_close": counts["close"],
        "fingerprint": spec.fingerprint,
        "package_version": __version__,
    }


def simulate_dataset(
    spec: SimSpec,
    out: str | Path,
    *,
    shard_size: int = 250,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the dataset ``spec`` to ``out`` (HDF5), resuming from ``out.parts/`` if present.

    An existing ``out`` is refused unless ``overwrite``: a dataset is never replaced silently.
    ``out.parts/`` (complete shards of an unfinished run) stays after a failure, so that the
    same command resumes; shards of another run found there are discarded, saying so.

    ``scheduler``: address of an existing Dask scheduler; otherwise a local cluster of
    ``workers`` processes (default: all cores) is started; ``workers=0`` runs in this process.
    """
    shard_size = check_positive("shard_size", shard_size)
    check_positive("n", spec.n)
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; give a file name (HDF5)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(exist_ok=True)
    bounds = [(s, min(s + shard_size, spec.n)) for s in range(0, spec.n, shard_size)]
    paths = [parts / f"shard_{s:09d}_{e:09d}.h5" for s, e in bounds]
    discard_foreign_shards(parts, spec, paths)
    (parts / "spec.json").write_text(json.dumps(spec.to_dict(), sort_keys=True))
    todo = [(s, e, str(p)) for (s, e), p in zip(bounds, paths, strict=True) if not p.exists()]
    try:
        _run_shards(spec, todo, scheduler, workers, progress, total=len(bounds))
    except BaseException:
        # complete shards stay for the rerun to resume from; a run that wrote none leaves
        # nothing behind
        if not any(parts.glob("shard_*.h5")):
            remove_parts(parts)
        raise
    counts = {"no_peak": 0, "close": 0}
    for p in paths:
        import h5py

        with h5py.File(p, "r") as f:
            shard_counts = json.loads(f.attrs["counts"])
        for k in counts:
            counts[k] += shard_counts[k]
    merge_shards(paths, out, dataset_meta(spec, counts), {"psf": psf_images(spec.setup)})
    remove_parts(parts)
    return out


def discard_foreign_shards(parts: Path, spec: SimSpec, keep: list[Path]) -> list[Path]:
    """Delete the shards in ``parts`` that this run cannot reuse: those written for another
    spec (their ``fingerprint`` attribute differs or is missing, e.g. a rerun with another seed)
    and those of another shard size. Reusing them would mix two runs' samples under one
    fingerprint. Says on stderr what it removed; returns the removed paths."""
    import h5py

    keep_names = {p.name for p in keep}
    removed = []
    for path in sorted(parts.glob("shard_*.h5")):
        foreign = path.name not in keep_names
        if not foreign:
            try:
                with h5py.File(path, "r") as f:
                    foreign = f.attrs.get("fingerprint") != spec.fingerprint
            except OSError:
                foreign = True  # unreadable: redraw it
        if foreign:
            path.unlink()
            removed.append(path)
    if removed:
        print(
            f"vaedeblend simulate: discarded {len(removed)} leftover shard(s) in {parts} "
            "written by a different run (other arguments or shard size); drawing them anew",
            file=sys.stderr,
        )
    return removed


def _run_shards(spec, todo, scheduler, workers, progress, total):
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=total - len(todo),
        unit="shard",
        disable=not progress,
        desc="simulating",
    )
    if not todo:
        bar.close()
        return
    if workers == 0 and scheduler is None:
        for args in todo:
            simulate_shard(spec, *args)
            bar.update()
        bar.close()
        return
    from dask.distributed import as_completed

    with local_client(workers, scheduler) as client:
        futures = [client.submit(simulate_shard, spec, *args, pure=False) for args in todo]
        for future in as_completed(futures):
            future.result()
            bar.update()
    bar.close()
