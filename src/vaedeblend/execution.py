"""Where parallel work runs: a Dask client on a local cluster of single-thread worker processes
(one per usable core by default) or on a given scheduler, shared by the simulator and field
mode so that both start, size and close their clusters the same way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@contextmanager
def local_client(workers: int | None = None, scheduler: str | None = None) -> Iterator:
    """A ``dask.distributed.Client``: on ``scheduler`` (an address) when given, else on a new
    local cluster of ``workers`` single-thread processes (None: :func:`usable_cores`). The
    cluster is closed on the way out, errors included."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers or usable_cores(), threads_per_worker=1, processes=True,
            dashboard_address=None,
        )  # fmt: skip
    try:
        with Client(scheduler or cluster) as client:
            yield client
    finally:
        if cluster is not None:
            cluster.close()
