"""Speed settings that must not change results: ``train.threads=auto``, byte-sized pre-training
chunks, the pool in RAM, batched noisy views and a training step without host reads. No test
here measures time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semimer.config import load_config
from semimer.utils import THREADS_MIN_STEP_FLOPS, auto_threads, parse_threads


def test_auto_threads_rule(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    big = 10 * THREADS_MIN_STEP_FLOPS
    assert auto_threads(THREADS_MIN_STEP_FLOPS / 10, free=2.0, cpus=2) == 1, "small steps: one thread"
    assert auto_threads(big, free=2.0, cpus=2) == 2, "large steps, both cores free: both"
    assert auto_threads(big, free=1.7, cpus=2) == 1, "another process on a core: never a thread there"
    assert auto_threads(big, free=0.0, cpus=2) == 1
    assert auto_threads(big, free=16.0, cpus=8) == 8, "never more than this process's CPUs"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert auto_threads(big, free=8.0, cpus=8) == 4, "torchrun: the local ranks share the cores"


def test_threads_setting_is_validated_and_applied():
    from semimer.utils import apply_threads

    assert load_config(None, []).train.threads == "auto"
    assert (parse_threads("auto"), parse_threads("0"), parse_threads(3)) == (None, 0, 3)
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ValueError, match="train.threads"):
            load_config(None, [f"train.threads={bad}"])
    before = torch.get_num_threads()
    try:
        assert apply_threads("1") == 1 == torch.get_num_threads()
        assert apply_threads("auto", THREADS_MIN_STEP_FLOPS / 2) == 1
    finally:
        torch.set_num_threads(before)


def test_pool_settings_are_validated():
    for bad, key in (("pretrain.pool=ram", "pretrain.pool"), ("pretrain.chunk_mb=0", "pretrain.chunk_mb"),
                     ("pretrain.memory_mb=-1", "pretrain.memory_mb")):
        with pytest.raises(ValueError, match=key):
            load_config(None, [bad])


def test_chunks_are_sized_in_bytes_not_clips():
    from semimer.data.ragged import chunk_batches

    clip_bytes = np.array([100.0] * 10 + [5000.0] * 2 + [100.0] * 8)  # two huge clips (long frame-level ones)
    batches = [np.arange(s, s + 4) for s in range(0, 20, 4)]
    chunks = chunk_batches(batches, clip_bytes, chunk_bytes=1000)
    # every batch exactly once, in order, in runs of consecutive batches
    assert [j for s, e in chunks for j in range(s, e)] == list(range(len(batches)))
    for s, e in chunks:
        size = sum(clip_bytes[b].sum() for b in batches[s:e])
        assert size <= 1000 or e - s == 1, "over budget only as a batch of its own"
    assert (2, 3) in chunks, "the batch with the huge clips is alone"
    assert chunk_batches(batches, clip_bytes, chunk_bytes=1e12) == [(0, len(batches))]
    assert chunk_batches([], clip_bytes, 10) == []


def test_pool_in_memory_by_budget():
    from semimer.train.pretrain import keep_pool_in_memory

    pc = load_config(None, []).pretrain
    assert keep_pool_in_memory(10 * 2**20, pc, budget=2**30)
    assert not keep_pool_in_memory(2**31, pc, budget=2**30)
    assert keep_pool_in_memory(2**40, load_config(None, ["pretrain.pool=memory"]).pretrain)
    assert not keep_pool_in_memory(1, load_config(None, ["pretrain.pool=stream"]).pretrain)


def test_rank_share_splits_every_batch_evenly():
    from semimer.train.pretrain import pad_for_ranks, rank_share

    batches = [np.arange(0, 64), np.arange(64, 99)]
    assert pad_for_ranks(batches, 1) is batches and rank_share(batches, 1, 0) is batches
    padded = pad_for_ranks(batches, 2)
    parts = [rank_share(padded, 2, r) for r in range(2)]
    for j, b in enumerate(padded):
        a, c = parts[0][j], parts[1][j]
        assert len(a) == len(c) == len(b) // 2 and not set(a) & set(c) and set(a) | set(c) == set(b)
    with pytest.raises(ValueError, match="pad_for_ranks"):
        rank_share(batches, 2, 0)


@pytest.mark.parametrize("sizes,world", [([7, 7, 5], 3), ([256, 256, 100], 3), ([5, 3], 4), ([64, 35], 2), ([9], 4)])
def test_pad_for_ranks_uses_every_clip_without_duplicates_in_a_batch(sizes, world):
    """Worked out: [7, 7, 5] over 3 ranks -> 7 % 3 = 1, so 2 clips of the next batch join each of the
    first two batches (9, 9) and 5 % 3 = 2 takes 1 clip of the first batch (6); a lone batch of 9 over
    4 ranks cannot borrow and drops 1 (8)."""
    from semimer.train.pretrain import pad_for_ranks

    at = np.cumsum([0, *sizes])
    batches = [np.arange(at[i], at[i + 1]) for i in range(len(sizes))]
    padded = pad_for_ranks(batches, world)
    assert all(len(b) % world == 0 for b in padded)
    assert all(len(set(b.tolist())) == len(b) for b in padded), "no clip twice in one batch"
    assert all(set(b[:len(o)].tolist()) == set(o.tolist()) for b, o in zip(padded, batches) if len(b) >= len(o))
    if len(sizes) > 1:
        assert set(np.concatenate(padded).tolist()) == set(range(at[-1])), "every clip used"
        assert all(len(b) - len(o) == (-len(o)) % world for b, o in zip(padded, batches))
    if sizes == [7, 7, 5]:
        assert [len(b) for b in padded] == [9, 9, 6]
        assert padded[0][7:].tolist() == [7, 8] and padded[2][5:].tolist() == [0]
    if sizes == [9]:
        assert [len(b) for b in padded] == [8]


def _mrccl(dropout: float = 0.3, **over):
    from semimer.models import build_model

    cfg = load_config(None, ["model.name=mrccl", "model.hidden=16", "model.head_hidden=8",
                             f"model.dropout={dropout}", *[f"{k}={v}" for k, v in over.items()]])
    torch.manual_seed(0)
    dims = {"audio": 12, "text": 10, "video": 8}
    model = build_model("mrccl", dims, 4, cfg.model, noise_cfg=cfg.noise)
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(64, d, generator=g) for m, d in dims.items()}
    x["video"][:5] = float("nan")  # clips without video
    model.standardizer.fit(x)
    return model, x, torch.randint(0, 4, (64,), generator=g)


def test_batched_views_equal_one_pass_per_view():
    model, x, _ = _mrccl(dropout=0.0)
    clean = model.standardizer(x)
    noisy = model._noisy(clean)
    together = model.embed_views([clean, noisy])
    for view, got in zip((clean, noisy), together):
        alone = model.embed(view)
        for m in alone:
            torch.testing.assert_close(got[m], alone[m], rtol=1e-5, atol=1e-6)


def test_a_training_epoch_reads_the_device_once(monkeypatch):
    """No ``float()``/``item()``/``bool()`` of a tensor per step: loss terms are summed on the device
    and read once per epoch (on a GPU every such read waits for the device)."""
    from semimer.train.accel import adamw
    from semimer.train.fit import run_epoch

    model, x, y = _mrccl()
    model.modality_dropout = 0.2
    opt = adamw(model.parameters(), 1e-3, 1e-4)
    reads = {"item": 0, "__float__": 0, "__bool__": 0, "__int__": 0, "tolist": 0}
    for name in reads:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            reads[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model.train()
    sums, steps = run_epoch(model, x, 64, 16, torch.Generator().manual_seed(0), opt, model.loss, y=y)
    monkeypatch.undo()
    assert steps == 4 and {"loss", "cls", "modal", "noise"} <= set(sums)
    assert reads == {"item": 0, "__float__": 0, "__bool__": 0, "__int__": 0, "tolist": 1}, reads
