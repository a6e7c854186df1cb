"""Blends per second for the ``paper`` preset, LSST + Euclid (10 bands, 64x64), centred blends.

Two figures: the steady-state drawing rate of one process (median over repeats, after warm-up),
and the end-to-end rate of ``simulate_dataset`` on a local Dask cluster using every core
(cluster start, catalog loading, writing and merging included). Compared with the target of the
issue (50 ten-band blends per second on 2 cores) and BlendingToolKit's rate quoted from
``anchors.md`` (0.06-0.09 s per 6-band 120x120 blend on this machine class; not run here).

Also the whole command as a user runs it (``vaedeblend simulate`` in a new process: imports,
catalog, colour tables, Dask start-up, writing): a 40-stamp run with a cold and a warm disk
cache (``VAEDEBLEND_CACHE``, see ``vaedeblend/cache.py``), and ``--n`` blends (goal: >= 50/s for
1,000 ten-band blends).

    python benchmarks/bench_simulation.py [--n 1000] [--repeats 5] [--note TEXT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

from vaedeblend.execution import usable_cores  # noqa: E402
from vaedeblend.instruments import make_setup  # noqa: E402
from vaedeblend.simulation.blends import BlendConfig  # noqa: E402
from vaedeblend.simulation.run import CatalogSpec, SimSpec, _sample_maker, simulate_dataset  # noqa: E402

BTK_SECONDS_PER_BLEND = (0.06, 0.09)  # quoted from anchors.md (6 bands, 120x120)
TARGET_BLENDS_PER_S = 50.0


def spec(n: int) -> SimSpec:
    setup = make_setup("paper", "lsst+euclid")
    return SimSpec(setup.to_json(), CatalogSpec(seed=7, size=100_000), BlendConfig(), n, 7)


def single_process_rate(repeats: int, per_repeat: int = 100) -> float:
    maker = _sample_maker(spec(per_repeat))
    for i in range(20):  # warm-up: colour tables, FFT plans
        maker.make(99, i)
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(per_repeat):
            maker.make(r, i)
        rates.append(per_repeat / (time.perf_counter() - t0))
    return statistics.median(rates)


def end_to_end_rate(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate_dataset(spec(n), Path(tmp) / "bench.h5", progress=False)
        return n / (time.perf_counter() - t0)


def command_seconds(n: int, cache: Path, out: Path, workers: int | None) -> float:
    """Wall seconds of ``vaedeblend simulate`` (paper preset, LSST + Euclid, centred blends)
    run as a new process, with the disk cache in ``cache``."""
    import os
    import subprocess

    args = ["vaedeblend", "simulate", "--instruments", "lsst+euclid", "--kind", "blended",
            "--n", str(n), "--seed", "7", "--out", str(out), "--quiet", "--overwrite"]  # fmt: skip
    if workers is not None:
        args += ["--workers", str(workers)]
    env = {**os.environ, "VAEDEBLEND_CACHE": str(cache)}
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="conditions (e.g. a background job)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold = command_seconds(40, tmp / "cache", tmp / "a.h5", workers=0)
        warm = command_seconds(40, tmp / "cache", tmp / "b.h5", workers=0)
        whole = command_seconds(args.n, tmp / "cache", tmp / "c.h5", workers=None)
    one = single_process_rate(args.repeats)
    full = end_to_end_rate(args.n)
    btk = [1 / s for s in BTK_SECONDS_PER_BLEND]
    body = f"""
| measure | blends/s | ratio to target (50/s on 2 cores) | ratio to BTK (quoted, {btk[1]:.0f}-{btk[0]:.0f}/s) |
|---|---|---|---|
| one process, steady state (median of {args.repeats} x 100) | {one:.1f} | {one / TARGET_BLENDS_PER_S:.2f} | {one / btk[0]:.1f}-{one / btk[1]:.1f} |
| `simulate_dataset`, {args.n} blends, {usable_cores()} Dask workers, end to end | {full:.1f} | {full / TARGET_BLENDS_PER_S:.2f} | {full / btk[0]:.1f}-{full / btk[1]:.1f} |
| `vaedeblend simulate --n {args.n}`, whole command, {usable_cores()} Dask workers, warm cache | {args.n / whole:.1f} | {args.n / whole / TARGET_BLENDS_PER_S:.2f} | {args.n / whole / btk[0]:.1f}-{args.n / whole / btk[1]:.1f} |

| whole command, 40 stamps, in one process | seconds |
|---|---|
| cold disk cache (first run on a machine) | {cold:.1f} |
| warm disk cache | {warm:.1f} |

Ten bands (LSST ugrizy 0.2"/px, VIS 0.1"/px, NISP YJH 0.3"/px), 64x64 each, 1-4 galaxies
(mean 2.5), Poisson noise, synthetic catalog. BTK's figure is for 6 bands at 120x120, quoted
from anchors.md (BTK 1.0.9 needs numpy < 2.4 and astropy < 7, so it is not run here).
{args.note}
"""
    print(body)
    write_section("Simulation speed", "python " + " ".join(sys.argv), body)


if __name__ == "__main__":
    main()
