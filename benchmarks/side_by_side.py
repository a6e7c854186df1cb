"""Every deblender on the very same blends, measured by one code path (``evaluate``).

For each test set: the baselines (``none``, ``sep``, ``photutils``, ``scarlet2``: issue 13)
and vaedeblend's own deblenders (shipped names or directories, named with their weights' hash)
run on the same blends; each output is measured by ``evaluate_dataset``; one table per set
goes to RESULTS.md ("Side by side: <set>") with m, binned abs(median d abs(e)), binned
abs(median dmag), mean abs(dF/F) in r (aperture and stamp sum), the sigma of the adaptive-moment
e1 residual, median SSIM in r, failures, and seconds per blend on this machine, with the ratio
to scarlet2's (scarlet2 timed after its first blend, which holds JAX's compilation: reported
apart). A figure of the median abs(dmag) against B_tot for all methods is written next to
RESULTS.md.

    python benchmarks/side_by_side.py --data TEST.h5 --model lsst [--model DIR ...] [--refine] \\
        [--methods none sep photutils scarlet2] [--limit 500] [--record] [--note TEXT]

Timings are only meaningful with nothing else running on the machine (``--note`` says when a
figure was measured beside a background job). ``--time-on N`` times every method again, in this
run, on the first N blends of the set (the accuracy columns still come from all of them, their
outputs reused from ``--work`` when present): a whole table's timings for the cost of N blends
of scarlet2, so that they can be taken with the machine idle.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import RESULTS, report  # noqa: E402

from vaedeblend.baselines import run_baseline  # noqa: E402
from vaedeblend.dataset import open_dataset, write_h5  # noqa: E402
from vaedeblend.evaluation import EvalConfig, evaluate_dataset  # noqa: E402


def weights_hash(model) -> str:
    """First 10 hex digits of the SHA-256 of the model's weights file."""
    path = Path(model.path) / model.config["weights"]["file"]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def run_model(name: str, data: Path, out: Path, limit: int | None, refine: bool = False) -> dict:
    """A vaedeblend deblender on the test set: the same ``deblended`` file as a baseline's
    (``refine``: its outputs refined under its latent prior, issue 15)."""
    from vaedeblend.pretrained import resolve_model
    from vaedeblend.refinement import refined

    plain = resolve_model(name)
    model = refined(plain) if refine else plain
    with open_dataset(data) as ds:
        n = len(ds) if limit is None else min(limit, len(ds))
        blends = ds.read("blend", slice(0, n))
        meta = {"fingerprint": ds.meta["fingerprint"], "band_ids": json.dumps(ds.band_ids)}
        start = time.perf_counter()
        deblended = model.deblend(blends, bands=ds.band_ids)
        seconds = time.perf_counter() - start
    label = f"vaedeblend {name}{' refined' if refine else ''} ({weights_hash(plain)})"
    summary = {"method": label, "n": n,
               "seconds_per_blend": seconds / n}  # fmt: skip
    write_h5(out, {"deblended": deblended}, {**meta, "summary": json.dumps(summary)})
    return summary


def timed_again(method: str | tuple, data: Path, scratch: Path, n: int, options: dict) -> dict:
    """Seconds per blend of ``method`` (a baseline, or ``("model", name, refine)``) re-measured
    on the first ``n`` blends of ``data``; the outputs of this run are thrown away."""
    out = scratch / "timing.h5"
    out.unlink(missing_ok=True)
    if isinstance(method, tuple):
        _, name, refine = method
        summary = run_model(name, data, out, n, refine)
    else:
        summary = run_baseline(method, data, out, limit=n, **options)
    out.unlink(missing_ok=True)
    keys = ("seconds_per_blend", "median_after_first_s", "first_blend_s")
    return {"timed_on": n, **{k: summary[k] for k in keys if k in summary}}


def reused_summary(out: Path, data: Path) -> dict | None:
    """The recorded summary of a baseline's earlier output ``out`` for this test set, if any."""
    if not out.exists():
        return None
    with h5py.File(out, "r") as f, h5py.File(data, "r") as d:
        same = f.attrs.get("fingerprint") == json.loads(d.attrs["meta"])["fingerprint"]
        return json.loads(f.attrs["summary"]) if same else None


def measure(data: Path, deblended: Path, report_dir: Path, limit: int | None) -> dict:
    """Headline numbers of one method's outputs, plus the per-galaxy arrays for the figure."""
    metrics = evaluate_dataset(
        data, deblended, report_dir, label=deblended.stem, config=EvalConfig(figures=False),
        limit=limit,
    )  # fmt: skip
    ref = metrics["reference_band"]
    per = np.load(report_dir / "per_galaxy.npz")
    head = metrics["headline"]
    adaptive = metrics["shapes"]["adaptive"][ref]
    ksb = metrics["shapes"]["ksb"][ref]
    return {
        "m": head["m"],
        "binned_de": head["binned_abs_median_delta_abs_e"],
        "binned_dmag": head["binned_abs_median_delta_mag"],
        "median_de": head["median_abs_delta_abs_e"],
        "dff_aperture": float(np.nanmean(np.abs(per[f"flux_aperture.{ref}.rel_error"]))),
        "dff_sum": float(np.nanmean(np.abs(per[f"flux_sum.{ref}.rel_error"]))),
        "sigma_e1": adaptive["residual_g1"]["std"],
        "ssim": float(np.nanmedian(per[f"ssim.{ref}"])),
        "failures": int(ksb["failures_output"]["n_failed"]),
        "blendedness": per["blendedness"],
        "dmag": per[f"flux_sum.{ref}.delta_mag"],
    }


def table(rows: list[tuple[str, dict, dict]]) -> str:
    scarlet = next((s for _, s, _ in rows if s["method"] == "scarlet2"), None)
    ref_time = None if scarlet is None else scarlet.get("median_after_first_s")
    lines = [
        "| method | m | binned abs(med d abs(e)) | binned abs(med dmag) | mean abs(dF/F) r, "
        "aperture / sum | sigma(e1) adaptive | median SSIM r | KSB failures | s per blend "
        "| speed vs scarlet2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, summary, r in rows:
        per_blend = summary.get("median_after_first_s") or summary["seconds_per_blend"]
        speed = "-" if not ref_time else f"{ref_time / per_blend:.0f}x"
        lines.append(
            f"| {name} | {r['m']:.3f} | {r['binned_de']:.3f} | {r['binned_dmag']:.3f} | "
            f"{100 * r['dff_aperture']:.1f} % / {100 * r['dff_sum']:.1f} % | "
            f"{r['sigma_e1']:.3f} | {r['ssim']:.3f} | {r['failures']} | {per_blend:.4f} | "
            f"{speed} |"
        )
    if scarlet is not None:
        lines += ["", f"scarlet2's first blend (JAX compilation included): "
                  f"{scarlet['first_blend_s']:.1f} s."]  # fmt: skip
    return "\n".join(lines)


def figure(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.array([0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    mid = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, _, r in rows:
        idx = np.digitize(r["blendedness"], edges) - 1
        med = [np.nanmedian(np.abs(r["dmag"][idx == k])) if np.sum(idx == k) >= 10 else np.nan
               for k in range(len(mid))]  # fmt: skip
        ax.plot(mid, med, marker="o", label=name)
    ax.set_xlabel("B_tot (blendedness)")
    ax.set_ylabel("median abs(dmag), r, stamp sum")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", action="append", default=[], help="vaedeblend deblender")
    parser.add_argument("--methods", nargs="+", default=["none", "sep", "photutils", "scarlet2"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--note", default="")
    parser.add_argument(
        "--work",
        help="keep the baselines' outputs here and reuse them (with their recorded timings) "
        "when run again on the same test set",
    )
    parser.add_argument(
        "--refine", action="store_true", help="also each --model refined (vaedeblend.refinement)"
    )
    parser.add_argument(
        "--time-on",
        type=int,
        default=None,
        metavar="N",
        help="re-time every method on the first N blends (nothing else running)",
    )
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.time_on is not None and args.time_on < 2:
        parser.error("--time-on needs at least 2 blends (scarlet2's first holds its compilation)")
    rows = []
    with open_dataset(args.data) as ds:
        scales = np.asarray(ds.pixel_scales_arcsec)
    multi_grid = not np.allclose(scales, scales[0])
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.work) if args.work else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for method in args.methods:
            out = tmp / f"{Path(args.data).stem}_{method}_{args.limit}.h5"
            summary = reused_summary(out, args.data) if args.work else None
            # scarlet2 fits one grid here: on LSST + Euclid, the LSST bands (measured in lsst_r)
            first_grid = method == "scarlet2" and multi_grid
            options = {"first_grid_only": True} if first_grid else {}
            # timed first, so that scarlet2's first timed blend holds JAX's compilation
            again = (
                timed_again(method, args.data, tmp, args.time_on, options) if args.time_on else {}
            )
            if summary is None:
                summary = run_baseline(method, args.data, out, limit=args.limit, **options)
            summary = {**summary, **again}
            name = f"{method} (first grid only)" if first_grid else method
            rows.append((name, summary, measure(args.data, out, tmp / method, args.limit)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        runs = [(name, refine) for name in args.model for refine in (False, True)
                if refine <= args.refine]  # fmt: skip
        for name, refine in runs:
            out = tmp / f"model_{len(rows)}.h5"
            method = ("model", name, refine)
            again = timed_again(method, args.data, tmp, args.time_on, {}) if args.time_on else {}
            summary = {**run_model(name, args.data, out, args.limit, refine), **again}
            rows.append(
                (summary["method"], summary, measure(args.data, out, tmp / out.stem, args.limit))
            )
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    with h5py.File(args.data, "r") as f:
        meta = json.loads(f.attrs["meta"])
    n = rows[0][1]["n"]
    title = f"{meta.get('preset')} {'+'.join(meta['band_ids'][:1])}.. {meta.get('centring')}"
    timing = f"on the first {args.time_on} blends " if args.time_on else ""
    fig_name = f"side_by_side_{Path(args.data).stem}.png"
    # without --record, beside the outputs (--work), not in the repository
    fig_dir = RESULTS.parent if args.record else Path(args.work or ".")
    figure(rows, fig_dir / fig_name, title)
    body = (
        f"Test set `{args.data.name}` ({n} blends, {len(meta['band_ids'])} bands, centring "
        f"{meta.get('centring')}, seed {meta.get('seed')}); every method on the same blends, "
        "measured by `evaluate`'s code path in the reference band. Baselines get the blend, "
        "the band PSFs, the sky levels and their own detection; the central source is the "
        "detection nearest the stamp centre. Seconds per blend on this machine, in this run "
        f"{timing}(scarlet2: median after its first blend). "
        f"Figure: `{fig_name}` (median abs(dmag) against B_tot). {args.note}\n\n" + table(rows)
    )
    report(
        f"Side by side: {meta.get('centring')} {'+'.join(sorted({b.split('_')[0] for b in meta['band_ids']}))}",
        body,
        args.record,
    )


if __name__ == "__main__":
    main()
