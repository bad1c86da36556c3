"""Several processes on torch.distributed (``torchrun``): who does what, and when they wait.

Launched by ``torchrun --nproc-per-node N semimer train|recipe|ablate|pretrain ...`` (or
``torchrun --nnodes M --node-rank R --rdzv-endpoint HOST:PORT ...`` on several machines), every
process runs the same command; the process group is joined lazily on first use (:func:`world`),
with gloo on CPUs and, on a machine with CUDA GPUs, NCCL for CUDA tensors (one GPU per local rank:
``LOCAL_RANK``) and gloo for CPU ones (``SEMIMER_DIST_BACKEND`` overrides the choice).

* **K-fold CV** (:func:`semimer.train.cv.cross_validate`, hence ``train``, every round and member of
  ``recipe``): rank ``r`` trains the folds ``k`` with ``k % N == r``; after a barrier every rank
  loads every fold from the run folder and computes the same out-of-fold and candidate
  predictions (folds are seeded per fold, so the predictions are those of one process); only
  rank 0 (the *lead*) writes the run's shared files. The recipe spreads the (run, fold) units of
  the CV runs whose inputs are known together (round 0 and the voting members without
  self-training; the members after the last round with it), so ranks do not idle at each run's
  barrier when the folds do not divide by the ranks.
* **pre-training** (:mod:`semimer.train.pretrain`): DistributedDataParallel over the pool: each
  step's batch is split over the ranks, the embeddings are gathered (with gradients) so every
  contrastive term sees the whole batch's negatives, and gradients are averaged: the same loss
  as one process up to the random draws (dropout, noise, modality dropout).
* **ablate**: seeds are spread over the ranks (each seed's runs single-process), then the lead tabulates.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch

from semimer.utils import log

_LOCAL = [0]  # > 0 inside local(): this process works alone


def requested() -> bool:
    """Launched as one of several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _init() -> bool:
    import torch.distributed as dist

    if not dist.is_available() or not requested():
        return False
    if dist.is_initialized():
        return True
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # CPU tensors (bookkeeping, a CPU run on a GPU machine) over gloo, CUDA tensors over NCCL
    backend = os.environ.get("SEMIMER_DIST_BACKEND") or ("cpu:gloo,cuda:nccl" if cuda else "gloo")
    # a fold or a pre-training epoch of another rank may take long: wait for it (torchrun stops
    # every process when one of them fails)
    hours = float(os.environ.get("SEMIMER_DIST_TIMEOUT_H", "12"))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=hours))
    if dist.get_rank() != 0:  # one voice: the other ranks report warnings and errors only
        log.setLevel(max(log.level, 30))
    log.info("torch.distributed: %d processes (%s), this is rank %d", dist.get_world_size(), backend, dist.get_rank())
    return True


def active() -> bool:
    """Several processes share this run (and this code is not inside :func:`local`)."""
    return not _LOCAL[0] and _init()


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def is_lead() -> bool:
    """Rank 0 (or the only process): the one that writes a run's shared files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a CPU all-reduce: the same over gloo alone or gloo + NCCL)."""
    import torch.distributed as dist

    if active():
        dist.all_reduce(torch.zeros(1))


def agree(value):
    """The lead's ``value`` on every rank (a picklable object)."""
    import torch.distributed as dist

    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mine(items: int) -> list[int]:
    """The indices ``k < items`` this rank works on: ``k % world == rank``."""
    n, r = world(), rank()
    return [k for k in range(items) if k % n == r]


@contextlib.contextmanager
def local():
    """Inside this block this process works alone (e.g. one seed of ``ablate`` per rank)."""
    _LOCAL[0] += 1
    try:
        yield
    finally:
        _LOCAL[0] -= 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along the batch (rank order), gradients flowing back to
    each rank's own rows (every rank must pass the same shape)."""
    if not active():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along the batch, without gradients."""
    import torch.distributed as dist

    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def device_for_rank(requested_device: str):
    """``train.device`` under torchrun: ``auto``/``cuda`` -> this rank's GPU (``LOCAL_RANK``)."""
    from semimer.utils import pick_device

    dev = pick_device(requested_device)
    if dev.type == "cuda" and dev.index is None and requested():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev
