"""Frame-level features end to end: Ragged batches, masked standardisation, frame encoders (batch
invariance, token pruning counts), both models, CV / recipe / predict from npy folders and packed stores."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from semimer.config import ModelConfig, load_config
from semimer.data.layout import load_dataset
from semimer.models import build_model
from semimer.models.base import Standardizer
from semimer.models.frame import FrameEncoder, sinusoid
from semimer.data.ragged import (Ragged, collate, concat, inference_batches, length_bucketed_batches)
from semimer.data.synth import feature_names, generate, PRESETS
from semimer.train.fit import predict_tensors, take

RNG = np.random.default_rng(0)


def clips(lengths, dim, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(t, dim)).astype(np.float32) for t in lengths]


# ------------------------------------------------------------------------------------------ Ragged
def test_ragged_subset_pad_and_cat_match_hand_built_arrays():
    arrs = clips([3, 1, 4, 2], 5)
    r = Ragged.from_arrays(arrs)
    assert len(r) == 4 and r.dim == 5 and r.lengths.tolist() == [3, 1, 4, 2]
    sub = r[torch.tensor([2, 0, 2])]  # repeats allowed (oversampling)
    for got, want in zip(range(3), [arrs[2], arrs[0], arrs[2]]):
        np.testing.assert_array_equal(sub.clip(got).numpy(), want)
    x, mask = sub.pad()
    assert x.shape == (3, 4, 5) and mask.sum(1).tolist() == [4, 3, 4]
    np.testing.assert_array_equal(x[1, :3].numpy(), arrs[0])
    assert (x[1, 3] == 0).all() and not mask[1, 3]
    both = Ragged.cat([r[slice(0, 2)], r[slice(3, 4)]])
    assert both.lengths.tolist() == [3, 1, 2]
    np.testing.assert_array_equal(both.clip(2).numpy(), arrs[3])
    merged = concat({"a": r[[0]], "t": torch.ones(1, 2)}, {"a": r[[1]], "t": torch.zeros(1, 2)})
    assert merged["a"].lengths.tolist() == [3, 1] and merged["t"].shape == (2, 2)
    # a clip with zero frames is a missing modality: kept, padded to an all-False mask row
    gap = Ragged.from_arrays([np.ones((2, 5), np.float32), np.zeros((0, 5), np.float32)])
    x, mask = gap.pad()
    assert gap.lengths.tolist() == [2, 0] and mask.tolist() == [[True, True], [False, False]]
    assert Ragged.from_arrays([np.zeros((0, 5), np.float32)]).pad()[1].shape == (1, 1)


def test_length_buckets_cover_every_clip_once_and_group_similar_lengths():
    lengths = RNG.integers(1, 200, size=1000)
    gen = torch.Generator().manual_seed(3)
    batches = length_bucketed_batches(lengths, 16, gen)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    rand = np.array_split(np.random.default_rng(1).permutation(1000), len(batches))
    padded_random = sum(len(b) * lengths[b].max() for b in rand)
    assert padded < 0.7 * padded_random  # buckets cut padding
    again = length_bucketed_batches(lengths, 16, torch.Generator().manual_seed(3))
    assert all((a == b).all() for a, b in zip(batches, again))  # seeded


def test_inference_batches_respect_the_frame_budget():
    lengths = np.array([5, 50, 7, 100, 3, 60])
    batches = inference_batches(lengths, 6, batch_size=4, max_frames=110)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 110
        assert len(b) <= 4
    assert [len(b) for b in inference_batches(None, 10, 4, 1)] == [4, 4, 2]


# ---------------------------------------------------------------------------------- standardiser
def test_standardizer_uses_valid_frames_only_and_keeps_padding_zero():
    arrs = clips([2, 6, 3], 4, seed=1)
    std = Standardizer({"a": 4})
    std.fit({"a": Ragged.from_arrays(arrs)})
    rows = np.concatenate(arrs).astype(np.float64)
    np.testing.assert_allclose(std.a_mean.numpy(), rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.a_std.numpy(), rows.std(0), rtol=1e-5)
    # a padded batch with its mask gives the same statistics
    x, mask = Ragged.from_arrays(arrs).pad()
    std2 = Standardizer({"a": 4})
    std2.fit_stream([{"a": x, "a_mask": mask}])
    np.testing.assert_allclose(std2.a_mean.numpy(), std.a_mean.numpy(), rtol=1e-6)
    out = std({"a": x, "a_mask": mask})["a"]
    assert (out[~mask] == 0).all()
    np.testing.assert_allclose(out[mask].numpy(), ((rows - rows.mean(0)) / rows.std(0)), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- frame encoder
def test_sinusoid_matches_the_formula():
    pos = torch.tensor([[0, 3]])
    enc = sinusoid(pos, 6)
    i = np.arange(3)
    freq = np.exp(-math.log(10000.0) * i / 3)
    want = np.concatenate([np.sin(3 * freq), np.cos(3 * freq)])
    np.testing.assert_allclose(enc[0, 1].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,pool,keep", [("transformer", "mean", 1.0), ("transformer", "attention", 0.6),
                                            ("pool", "mean", 1.0), ("pool", "attention", 1.0)])
def test_mixed_length_batch_equals_one_by_one(kind, pool, keep):
    torch.manual_seed(0)
    enc = FrameEncoder(6, 16, 0.0, kind=kind, layers=2, heads=4, pool=pool, keep_rate=keep, prune_from_layer=0).eval()
    arrs = clips([7, 3, 11, 1], 6, seed=2)
    x, mask = Ragged.from_arrays(arrs).pad()
    with torch.no_grad():
        batched = enc(x, mask)
        single = torch.cat([enc(torch.as_tensor(a)[None], torch.ones(1, len(a), dtype=torch.bool)) for a in arrs])
        # more padding changes nothing
        xp = torch.nn.functional.pad(x, (0, 0, 0, 5))
        mp = torch.nn.functional.pad(mask, (0, 5))
        padded = enc(xp, mp)
    torch.testing.assert_close(batched, single, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(padded, batched, atol=2e-5, rtol=1e-4)


def test_pruning_keeps_ceil_r_n_frames_per_layer_in_time_order():
    torch.manual_seed(0)
    layers, r = 3, 0.7
    enc = FrameEncoder(5, 8, 0.0, layers=layers, heads=2, keep_rate=r, prune_from_layer=1).eval()
    lengths = [10, 4, 1, 23]
    x, mask = Ragged.from_arrays(clips(lengths, 5, seed=4)).pad()
    with torch.no_grad():
        _, (tokens, kept_mask, frame_index) = enc(x, mask, return_tokens=True)
    for b, n in enumerate(lengths):
        for _ in range(1, layers):  # pruning after layers 1 and 2
            n = max(1, math.ceil(r * n - 1e-9)) if n else 0
        assert int(kept_mask[b].sum()) == n
        idx = frame_index[b][kept_mask[b]]
        assert (idx[1:] > idx[:-1]).all() and int(idx.max()) < lengths[b]
        assert (frame_index[b][~kept_mask[b]] == -1).all()


def test_pruning_disabled_equals_unpruned_encoder():
    torch.manual_seed(0)
    full = FrameEncoder(5, 8, 0.0, layers=2, heads=2).eval()
    x, mask = Ragged.from_arrays(clips([6, 9], 5)).pad()
    for keep, l0 in [(1.0, 0), (0.5, 2)]:  # keep_rate 1, or l0 = number of layers
        other = FrameEncoder(5, 8, 0.0, layers=2, heads=2, keep_rate=keep, prune_from_layer=l0).eval()
        other.load_state_dict(full.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(other(x, mask), full(x, mask))
    pruned = FrameEncoder(5, 8, 0.0, layers=2, heads=2, keep_rate=0.5, prune_from_layer=0).eval()
    pruned.load_state_dict(full.state_dict())
    with torch.no_grad():
        assert not torch.allclose(pruned(x, mask), full(x, mask))


def test_pruning_selects_the_most_attended_frames():
    """The block's attention module is replaced by one returning a hand-built attention matrix:
    every valid query puts its weight on frames 2 and 5 (clip 0) or frame 1 (clip 1, 3 valid
    frames), so exactly those are kept; padded queries (clip 1) would favour frame 0 but do not count."""

    class HandAttention(torch.nn.Module):
        def forward(self, q, k, v, key_padding_mask=None, need_weights=False, average_attn_weights=True):
            B, T, _ = q.shape
            w = torch.full((B, 1, T, T), 0.01)
            w[0, :, :, [2, 5]] = 1.0
            w[1, :, :3, 1] = 1.0
            w[1, :, 3:, 0] = 50.0  # from padded queries only
            return torch.zeros_like(q), (w if need_weights else None)

    enc = FrameEncoder(3, 4, 0.0, layers=1, heads=1, keep_rate=0.25, prune_from_layer=0).eval()
    enc.blocks[0].attn = HandAttention()
    x = torch.randn(2, 8, 3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 3:] = False
    with torch.no_grad():
        _, (_, kept, fi) = enc(x, mask, return_tokens=True)
    assert fi[0][kept[0]].tolist() == [2, 5]  # ceil(0.25 * 8) = 2
    assert fi[1][kept[1]].tolist() == [1]  # ceil(0.25 * 3) = 1


def test_frame_encoder_errors():
    with pytest.raises(ValueError, match="keep_rate"):
        FrameEncoder(4, 8, 0.0, keep_rate=0.0)
    with pytest.raises(ValueError, match="keep_rate"):
        FrameEncoder(4, 8, 0.0, keep_rate=1.5)
    with pytest.raises(ValueError, match="prune_from_layer"):
        FrameEncoder(4, 8, 0.0, layers=2, keep_rate=0.5, prune_from_layer=3)
    with pytest.raises(ValueError, match="attention weights"):
        FrameEncoder(4, 8, 0.0, kind="pool", keep_rate=0.5)
    with pytest.raises(ValueError, match="frame_encoder"):
        FrameEncoder(4, 8, 0.0, kind="lstm")


def test_a_clip_without_frames_encodes_to_zero_and_leaves_the_others_unchanged():
    torch.manual_seed(0)
    enc = FrameEncoder(4, 8, 0.0, keep_rate=0.5, prune_from_layer=0).eval()
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    with torch.no_grad():
        out = enc(x, mask)
        alone = enc(x[:1, :2], mask[:1, :2])
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros(8))
    torch.testing.assert_close(out[0], alone[0])


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name", ["attention", "mrccl"])
def test_models_take_mixed_levels_and_are_batch_invariant(name):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, hidden=16, head_hidden=8, frame_heads=2, keep_rate=0.8, prune_from_layer=0)
    dims, levels = {"audio": 6, "text": 5, "video": 4}, {"audio": "frame", "video": "frame"}
    model = build_model(name, dims, 6, cfg, levels=levels)
    assert model.levels == {"audio": "frame", "text": "utt", "video": "frame"}
    feats = {"audio": Ragged.from_arrays(clips([5, 9, 2, 7], 6)), "text": torch.randn(4, 5),
             "video": Ragged.from_arrays(clips([3, 1, 4, 2], 4, seed=5))}
    model.standardizer.fit(feats)
    batch = collate(feats)
    loss, parts = model.loss(batch, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and "cls" in parts
    if name == "mrccl":
        assert {"modal", "noise"} <= set(parts)
        model.contrastive_loss(batch)[0].backward()
    probs = predict_tensors(model, feats, batch_size=4)
    one = np.concatenate([predict_tensors(model, take(feats, [i])) for i in range(4)])
    np.testing.assert_allclose(probs, one, atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="audio_mask"):
        model({k: v for k, v in batch.items() if k != "audio_mask"})
    with pytest.raises(ValueError, match=r"\(B, T, 6\)"):
        model({**batch, "audio": torch.randn(4, 6)})


def test_checkpoint_round_trip_keeps_levels(tmp_path):
    from semimer.models.checkpoint import load_model, save_model

    cfg = ModelConfig(name="mrccl", hidden=16, head_hidden=8, frame_heads=2)
    model = build_model("mrccl", {"audio": 6, "text": 5}, 6, cfg, levels={"audio": "frame"}).eval()
    save_model(tmp_path, model, list("abcdef"), cfg)
    loaded, meta = load_model(tmp_path)
    assert meta["levels"] == {"audio": "frame", "text": "utt"}
    feats = {"audio": Ragged.from_arrays(clips([5, 9], 6)), "text": torch.randn(2, 5)}
    np.testing.assert_allclose(predict_tensors(loaded, feats), predict_tensors(model, feats), atol=1e-6)


# ------------------------------------------------------------------------------------- synthetic data
TINY_FRAMES = {"frames": {"audio": [3, 12], "video": [2, 6]}, "n_unlabeled": 400, "n_candidates": 200, "n_test": 100}


@pytest.fixture(scope="module")
def frame_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    ds = generate(root, "tiny", seed=0, fmt="both", **TINY_FRAMES)
    return ds, root / "test-labels.csv"


def test_synthetic_frame_preset_shapes_and_stores(frame_data):
    ds, _ = frame_data
    names = feature_names(PRESETS["tiny"].__class__(frames=TINY_FRAMES["frames"]))
    assert names == {"audio": "audio-FRA", "text": "text-UTT", "video": "video-FRA"}
    npy = load_dataset(ds, names, prefer="npy")
    packed = load_dataset(ds, names, prefer="packed")
    assert npy.levels() == packed.levels() == {"audio": "frame", "text": "utt", "video": "frame"}
    assert packed.stores["audio"].kind == "packed" and npy.stores["audio"].kind == "npy-folder"
    some = npy.labeled[:20]
    a, b = npy.features(some), packed.features(some)
    for x, y in zip(a["audio"], b["audio"]):
        np.testing.assert_array_equal(x, y)
        assert 3 <= len(x) <= 12
    assert all(2 <= len(x) <= 6 for x in a["video"])


def test_salient_segment_carries_the_signal():
    """Frame-level generator: frames outside the salient segment do not depend on the class."""
    from semimer.data.synth import SynthConfig, _Model

    cfg = SynthConfig(n_speakers=1, dims={"audio": 8, "text": 8, "video": 8}, latent_dim=4, speaker_sigma=0.0,
                      frames={"audio": [10, 10]}, salient_fraction=0.3, frame_sigma={"audio": 0.0, "text": 1, "video": 1},
                      missing_rate=0.0)
    model = _Model(cfg, 0)
    out = model.features(np.array([0, 1]), np.array([0, 0]), np.random.default_rng(0))
    for clip in out["audio"]:
        varying = np.abs(clip - model.offset["audio"]).sum(1) > 1e-6
        assert varying.sum() == 3 and np.all(np.diff(np.flatnonzero(varying)) == 1)


# ------------------------------------------------------------------------------------ CV / recipe / predict
FAST = ["train.epochs=2", "train.folds=2", "train.progress=false", "train.threads=1", "model.hidden=16",
        "model.head_hidden=8", "model.frame_heads=2", "train.batch_size=32", "pretrain.epochs=1",
        "pretrain.batch_size=64", "self_train.max_per_class=4"]
FEATS = ["data.audio=audio-FRA", "data.video=video-FRA"]


@pytest.mark.parametrize("prefer", ["npy", "packed"])
def test_stored_frames_read_per_batch_equal_frames_in_memory(frame_data, prefer):
    from semimer.data.ragged import Ragged, StoredFrames, load_features

    ds, _ = frame_data
    data = load_dataset(ds, {"audio": "audio-FRA", "text": "text-UTT"}, prefer=prefer)
    names = data.labeled[:30]
    mem = load_features(data, names, "cpu", "memory")
    lazy = load_features(data, names, "cpu", "store")
    assert isinstance(mem["audio"], Ragged) and isinstance(lazy["audio"], StoredFrames)
    assert lazy["audio"].lengths.tolist() == mem["audio"].lengths.tolist()
    idx = torch.tensor([5, 0, 5, 29])
    for a, b in zip(collate(take(mem, idx)).values(), collate(take(lazy, idx)).values()):
        torch.testing.assert_close(a, b)
    both = concat(take(lazy, [1, 2]), take(lazy, [3]))
    assert isinstance(both["audio"], StoredFrames) and list(both["audio"].names) == names[1:4]
    s1, s2 = Standardizer({"audio": 24}), Standardizer({"audio": 24})
    s1.fit({"audio": mem["audio"]})
    s2.fit({"audio": lazy["audio"]})
    torch.testing.assert_close(s1.audio_std, s2.audio_std)
    with pytest.raises(ValueError, match="frame_cache"):
        load_features(data, names, "cpu", "disk")


@pytest.mark.parametrize("prefer,cache", [("npy", "memory"), ("packed", "store")])
def test_cv_on_frame_features_and_predict_from_stores(frame_data, tmp_path, prefer, cache):
    from semimer.train.cv import run_cv
    from semimer.infer.predict import load_ensemble, predict_clips

    ds, _ = frame_data
    cfg = load_config(None, [f"data.root={ds}", f"data.prefer={prefer}", "model.name=attention",
                             f"train.frame_cache={cache}", "model.keep_rate=0.7", "model.prune_from_layer=1",
                             *FAST, *FEATS])
    data = load_dataset(ds, cfg.data.features(), prefer=prefer)
    res = run_cv(data, cfg, tmp_path / "run")
    assert res.oof_probs.shape == (len(data.labeled), 6) and np.isfinite(res.oof_probs).all()
    assert json.loads((tmp_path / "run" / "features.json").read_text())["audio"]["level"] == "frame"
    ens = load_ensemble(tmp_path / "run")
    names, probs, failures = predict_clips(tmp_path / "run", data.candidates[:5], features_dir=ds, device="cpu")
    assert names == data.candidates[:5] and not failures
    np.testing.assert_allclose(probs, res.cand_probs[:5], atol=1e-5)
    assert len(ens) == 2
    # resuming reuses both folds and gives the same OOF predictions
    again = run_cv(data, cfg, tmp_path / "run")
    np.testing.assert_allclose(again.oof_probs, res.oof_probs, atol=1e-6)


def test_recipe_runs_on_frame_features_with_pruning(frame_data, tmp_path):
    from semimer.semi.recipe import run_recipe

    ds, test_labels = frame_data
    low = [f"self_train.thresholds.{c}=0.2" for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")]
    cfg = load_config(None, [f"data.root={ds}", "model.name=mrccl", "pretrain.enabled=true", "train.oversample=true",
                             "model.keep_rate=0.7", "self_train.rounds=1", *FAST, *FEATS, *low])
    data = load_dataset(ds, cfg.data.features())
    summary = run_recipe(data, cfg, tmp_path / "run", test_labels)
    run = tmp_path / "run"
    with open(run / "submission.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(data.candidates)
    assert (run / "pretrain" / "model.safetensors").is_file()
    assert json.loads((run / "round_0" / "fold_0" / "model.json").read_text())["levels"]["audio"] == "frame"
    assert "test" in json.dumps(summary)


@pytest.mark.parametrize("override,msg", [("model.keep_rate=0", "keep_rate"), ("model.keep_rate=1.2", "keep_rate"),
                                          ("model.prune_from_layer=5", "prune_from_layer"),
                                          ("model.frame_encoder=lstm", "frame_encoder"),
                                          ("model.prune_modalities=[speech]", "prune_modalities")])
def test_config_rejects_bad_frame_settings(override, msg):
    with pytest.raises(ValueError, match=msg):
        load_config(None, [override])
    with pytest.raises(ValueError, match="attention weights"):
        load_config(None, ["model.frame_encoder=pool", "model.keep_rate=0.5"])


def test_cv_gives_the_same_predictions_with_frames_in_memory_or_in_the_store(frame_data, tmp_path):
    from semimer.train.cv import run_cv

    ds, _ = frame_data
    oof = []
    for cache in ("memory", "store"):
        cfg = load_config(None, [f"data.root={ds}", "model.name=mrccl", f"train.frame_cache={cache}", *FAST, *FEATS])
        data = load_dataset(ds, cfg.data.features())
        oof.append(run_cv(data, cfg, tmp_path / cache, predict_candidates=False).oof_probs)
    np.testing.assert_allclose(oof[0], oof[1], atol=1e-5)
