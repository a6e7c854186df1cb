"""How much of the network's speed the real training loop keeps.

Two rates, same network (``fast``, the dataset's channels and stamp size, the chosen head and
loss), same batch, same torch threads, measured in one run:

- the bare step: forward + loss + backward + Adam on tensors already in memory (what
  ``bench_networks.py`` measures), median over repeats;
- the real loop: ``vaedeblend.models.training.train_vae`` on a dataset (batch gathering, flips,
  fresh noise, transform, logging, checkpoints), timed per optimiser step by a callback
  (median; one validation at the end, not timed, and the data loading before it not timed).

    python benchmarks/bench_training_loop.py --data ISO.h5 [--threads 1 2] [--loss bce] [--record]

The target (issue 12) is a ratio of at least 0.8. Nothing else may run on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_networks import _median_time  # noqa: E402
from results import report  # noqa: E402

from vaedeblend.dataset import open_dataset  # noqa: E402
from vaedeblend.models.lightning import VAEModule  # noqa: E402
from vaedeblend.models.networks import preset  # noqa: E402
from vaedeblend.models.training import train_vae  # noqa: E402


class StepTimer(pl.Callback):
    """Wall seconds between consecutive training-batch starts (data, step and bookkeeping)."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def step_seconds(self, skip: int) -> list[float]:
        gaps = [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]
        return gaps[skip:]


def bare_step_seconds(channels, stamp, batch, loss, head, sky, seconds) -> float:
    """Median seconds of one step of the same Lightning module's loss, without the loop."""
    arch = preset("fast", channels=channels, stamp_size=stamp, head=head).to_dict()
    constants = [1.0] * channels if head == "asinh" else [1e4] * channels
    module = VAEModule(arch, constants, sky, loss=loss, lr=1e-3)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    target = torch.rand((batch, channels, stamp, stamp), generator=g) * 1e3
    x = target + torch.randn(target.shape, generator=g) * 30

    def step():
        terms = module._loss(x, target, target, sample=True)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()

    return _median_time(step, seconds, "cpu")


def measure(args, threads: int, channels: int, stamp: int, sky) -> tuple[float, float]:
    """(bare seconds per step, loop seconds per step) with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    head = "sigmoid" if args.loss == "bce" else "asinh"
    bare = bare_step_seconds(channels, stamp, args.batch, args.loss, head, sky, args.seconds)
    timer = StepTimer()
    warm = 5
    with tempfile.TemporaryDirectory() as tmp:
        train_vae(
            args.data, Path(tmp) / "run", callbacks=[timer], arch="fast", loss=args.loss,
            batch_size=args.batch, max_steps=args.steps + warm + 1,
            steps_per_epoch=args.steps + warm + 1, patience=0, validate_first=False,
            accelerator="cpu", progress=False, checkpoint_every=50,
        )  # fmt: skip
    return bare, statistics.median(timer.step_seconds(warm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="isolated-galaxy dataset")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--loss", default="bce")
    parser.add_argument("--steps", type=int, default=60, help="timed loop steps")
    parser.add_argument("--seconds", type=float, default=20.0, help="bare-step measurement")
    parser.add_argument("--note", default="", help="conditions (e.g. a background job)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with open_dataset(args.data) as ds:
        channels, stamp = len(ds.band_ids), ds.read("target", slice(0, 1)).shape[-1]
        sky = [float(s) for s in ds.sky_levels_electrons]
    rows, base = [], None
    for threads in args.threads:
        bare, loop = measure(args, threads, channels, stamp, sky)
        base = base or args.batch / loop
        rows.append(
            f"| {threads} | {args.batch / bare:.1f} | {args.batch / loop:.1f} | "
            f"{bare / loop:.2f} | {args.batch / loop / base:.2f} |"
        )
    body = (
        f"`fast` network, {channels} channels, {stamp}x{stamp}, batch {args.batch}, loss "
        f"{args.loss}. {args.note}\n\n"
        "| torch threads | bare step (stamps/s) | real loop (stamps/s) | loop / bare | "
        "loop speed-up over the first row |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Bare: the module's own loss, backward and Adam on tensors in memory (median over "
        f"{args.seconds:.0f} s). Loop: `train_vae` on `{args.data.name}`, median seconds between "
        f"consecutive training steps over {args.steps} steps after 5 (data gathering, flips, "
        "noise, transform, logging, checkpoints every 50 steps). Target: loop / bare >= 0.8."
    )
    report("Training loop throughput", body, args.record)


if __name__ == "__main__":
    main()
