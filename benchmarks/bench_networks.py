"""Training and inference throughput of the networks, next to this machine's matmul FLOP rate.

For each architecture (``paper``: per-element PReLU as in the paper; ``paper-channel``: per-channel
slopes; ``fast``: ours): parameters, FLOPs per stamp (``torch.utils.flop_counter``, convolutions
and matrix multiplies), training stamps/s (forward + BCE/KL loss + backward + Adam step, batch
100, random normalised 10-band 64x64 stamps) and inference stamps/s (forward without gradients,
same batch). The matmul rate (float32 2048x2048, same threads, same run) is the FLOP limit the
networks are compared with: fraction = network FLOP/s / matmul FLOP/s. Median over repeats,
after warm-up.

    python benchmarks/bench_networks.py [--threads 2] [--seconds 20]   # writes RESULTS.md
    python benchmarks/bench_networks.py --quick                        # tiny check, prints only

``--channels-last`` measures each network a second time with weights and stamps in PyTorch's
channels-last memory format (how ``Model`` runs them) and gives the ratio; its own section.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

from vaedeblend.models.losses import bce_loss  # noqa: E402
from vaedeblend.models.networks import (  # noqa: E402
    build_vae,
    count_parameters,
    forward_flops,
    preset,
    training_flops,
)

ARCHS = {
    "paper": ("paper", {"prelu": "element"}),
    "paper-channel": ("paper", {"prelu": "channel"}),
    "fast": ("fast", {}),
}


def matmul_gflops(n: int, seconds: float, device: str) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n**3 / _median_time(lambda: a @ b, seconds, device) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_time(fn, seconds: float, device: str, warmup: int = 2) -> float:
    """Median seconds per call of ``fn``, over repeats filling about ``seconds``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, args, channels_last: bool = False) -> dict:
    """Throughputs of one architecture; ``channels_last``: weights and input stamps in
    PyTorch's channels-last memory format (as ``Model`` runs them), same values."""
    arch, extra = ARCHS[name]
    torch.manual_seed(0)
    cfg = preset(arch, channels=args.channels, stamp_size=args.stamp, **extra)
    vae = build_vae(cfg).to(args.device)
    shape = (args.batch, args.channels, args.stamp, args.stamp)
    x = torch.rand(shape, device=args.device) * 2 - 1
    if channels_last:
        vae = vae.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.rand(shape, device=args.device)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-4)

    def train_step():
        logits, mu, sigma = vae.forward_logits(x, sample=True)
        loss = bce_loss(logits, target, mu, sigma).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            vae(x)

    vae.train()
    t_train = _median_time(train_step, args.seconds, args.device)
    vae.eval()
    t_infer = _median_time(infer, args.seconds, args.device)
    cpu = build_vae(cfg)
    return {
        "name": f"{name}, channels last" if channels_last else name,
        "arch": name,
        "params": count_parameters(cpu),
        "fwd_flops": forward_flops(cpu),
        "train_flops": training_flops(cpu),
        "train_rate": args.batch / t_train,
        "infer_rate": args.batch / t_infer,
    }


def table(rows: list[dict], peak: float, args) -> str:
    lines = [
        f"Matmul float32 {args.matmul}x{args.matmul}: **{peak:.1f} GFLOP/s** "
        f"({args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}); "
        f"stamps {args.channels}x{args.stamp}x{args.stamp}, batch {args.batch}.",
        "",
        "| network | parameters | forward MFLOP/stamp | train MFLOP/stamp | train stamps/s "
        "| train GFLOP/s (fraction of matmul) | inference stamps/s "
        "| inference GFLOP/s (fraction) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        train_rate = r["train_rate"] * r["train_flops"] / 1e9
        infer_rate = r["infer_rate"] * r["fwd_flops"] / 1e9
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['fwd_flops'] / 1e6:.1f} "
            f"| {r['train_flops'] / 1e6:.1f} | {r['train_rate']:.1f} "
            f"| {train_rate:.1f} ({train_rate / peak:.0%}) | {r['infer_rate']:.1f} "
            f"| {infer_rate:.1f} ({infer_rate / peak:.0%}) |"
        )
    base = {r["name"]: r for r in rows}
    if "paper" in base and "fast" in base:
        speed = base["fast"]["train_rate"] / base["paper"]["train_rate"]
        lines += ["", f"`fast` trains {speed:.1f}x as many stamps per second as `paper`."]
    for r in rows:
        if r["name"] != r["arch"] and r["arch"] in base:
            plain = base[r["arch"]]
            lines += [
                "",
                f"`{r['arch']}` in channels-last memory format against the default, same run: "
                f"training {r['train_rate'] / plain['train_rate']:.2f}x, "
                f"inference {r['infer_rate'] / plain['infer_rate']:.2f}x the stamps per second.",
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, print only")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--stamp", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--matmul", type=int, default=2048)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="also measure each network in channels-last memory format (own section)",
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.channels, args.stamp, args.seconds, args.matmul = 4, 3, 16, 0.2, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops(args.matmul, args.seconds, args.device)
    formats = (False, True) if args.channels_last else (False,)
    rows = [measure(name, args, last) for name in args.archs for last in formats]
    body = table(rows, peak, args)
    print(body)
    if not args.quick:
        title = "Networks, channels last" if args.channels_last else "Networks"
        write_section(title, "python " + " ".join(sys.argv), body)


if __name__ == "__main__":
    main()
