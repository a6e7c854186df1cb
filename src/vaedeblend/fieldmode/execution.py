"""Where a field's tiles run: in this process, on local Dask worker processes, or on a running
Dask scheduler (:class:`Execution`).

The parent process reads each tile's pixels from the (memory-mapped) inputs and scatters them to
a worker; a few tiles are in flight per worker, which bounds the memory held for them. Workers
load a model directory once each (a loaded model is sent as it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vaedeblend.argtypes import check_positive
from vaedeblend.execution import local_client, usable_cores
from vaedeblend.fieldmode.region import deblend_region, read_region

DEFAULT_TILE_PIXELS = 1024


@dataclass(frozen=True)
class Execution:
    """How a field is cut and where its tiles run.

    Attributes:
        tile_pixels: side of the tiles' cores, reference-grid pixels (each tile also reads a
            margin of 1.5 stamp widths, so tiling does not change the results).
        workers: local Dask worker processes (0: this process; None: one per usable core).
        scheduler: address of a running Dask scheduler (then ``workers`` is ignored).
        device: torch device of the model.
        progress: show a progress bar over the tiles.
    """

    tile_pixels: int = DEFAULT_TILE_PIXELS
    workers: int | None = 0
    scheduler: str | None = None
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self):
        check_positive("tile size (pixels)", self.tile_pixels)
        if self.workers is not None and (int(self.workers) != self.workers or self.workers < 0):
            raise ValueError(f"workers must be a count >= 0 or None, got {self.workers!r}")

    def tile_results(self, field, geom, tiles, model, settings):
        """Iterator over the tiles' :class:`~.region.RegionResult`, in completion order."""
        if self.scheduler is None and (self.workers == 0 or len(tiles) == 1):
            return _in_process(field, geom, tiles, model, settings)
        workers = self.workers or usable_cores()
        return _with_dask(field, geom, tiles, model, settings, workers, self.scheduler, self.device)


@lru_cache(maxsize=4)
def _worker_model(path: str, device: str):
    from vaedeblend.models.api import load_model

    return load_model(path, device=device)


def _tile_task(geom, region, model_ref, settings, device):
    """Deblend one tile in a Dask worker (one thread: the worker processes share the cores)."""
    import torch

    torch.set_num_threads(1)
    model = _worker_model(model_ref, device) if isinstance(model_ref, str) else model_ref
    return deblend_region(geom, region, model, settings)


def _in_process(field, geom, tiles, model, settings):
    for tile in tiles:
        yield deblend_region(geom, read_region(field, geom, tile, settings), model, settings)


def _with_dask(field, geom, tiles, model, settings, workers, scheduler, device):
    from dask.distributed import as_completed

    from vaedeblend.models.api import Model

    model_ref = model.path if isinstance(model, Model) else model
    with local_client(workers, scheduler) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        geom_future = client.scatter(geom, broadcast=True)
        pending = list(tiles)
        running = as_completed()
        # a few tiles in flight per worker: the parent reads each tile's pixels when it is
        # submitted, so this bounds the memory held for them
        while pending or running.count():
            while pending and running.count() < 2 * n_workers:
                tile = pending.pop(0)
                # scattered, not embedded in the task graph (tiles are megabytes)
                region = client.scatter(read_region(field, geom, tile, settings))
                running.add(
                    client.submit(
                        _tile_task, geom_future, region, model_ref, settings, device, pure=False
                    )
                )
            yield next(running).result()
