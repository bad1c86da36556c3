"""MR-CCL model: voting, losses wired as specified, batch-composition invariance, determinism,
pre-training (streamed, saved, reused) — each against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semimer.config import load_config
from semimer.models.losses import nt_xent
from semimer.models import build_model, list_models

DIMS = {"audio": 12, "text": 20, "video": 8}


def make(overrides=(), seed=0):
    cfg = load_config(None, ["model.name=mrccl", "model.hidden=16", "model.head_hidden=8", *overrides])
    torch.manual_seed(seed)
    return build_model("mrccl", DIMS, 6, cfg.model, noise_cfg=cfg.noise), cfg


def batch(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}


def test_registered():
    assert {"attention", "mrccl"} <= set(list_models())


def test_prediction_does_not_depend_on_batch_composition():
    model, _ = make()
    model.eval()
    x = batch(9)
    full = model(x)["probs"]
    alone = torch.cat([model({m: v[i:i + 1] for m, v in x.items()})["probs"] for i in range(9)])
    shuffled_idx = torch.tensor([3, 8, 0, 5, 1, 7, 2, 6, 4])
    shuffled = model({m: v[shuffled_idx] for m, v in x.items()})["probs"]
    torch.testing.assert_close(full, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(full[shuffled_idx], shuffled, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["prob", "logit"])
def test_vote_matches_hand_computation(mode):
    model, _ = make([f"model.vote_mode={mode}"])
    model.eval()
    out = model(batch(5))
    w = {"audio": 0.7, "text": 0.3, "video": 0.4, "fusion": 0.7}
    L = out["head_logits"]
    if mode == "prob":
        expect = sum(w[k] * torch.softmax(L[k], -1) for k in w) / sum(w.values())
    else:
        expect = torch.softmax(sum(w[k] * L[k] for k in w), -1)
    torch.testing.assert_close(out["probs"], expect)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(5))


def test_classification_loss_is_fused_plus_mean_head_ce():
    model, _ = make(["model.use_modal=false", "model.use_noise=false", "model.dropout=0.0"])
    x, y = batch(6), torch.tensor([0, 1, 2, 3, 4, 5])
    loss, parts = model.loss(x, y)
    out = model(x)
    heads = ["audio", "text", "video", "fusion"]
    expect = -torch.log(out["probs"][torch.arange(6), y]).mean() + \
        sum(F.cross_entropy(out["head_logits"][k], y) for k in heads) / 4
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    assert set(parts) == {"cls"}


def test_fine_tuning_loss_includes_modal_and_noise_terms():
    """The published fragment computed the noise term and dropped it; ours adds both terms."""
    model, _ = make(["model.dropout=0.0", "model.lambda_modal=0.5", "model.lambda_noise=2.0"])
    x, y = batch(6), torch.tensor([0, 1, 2, 3, 4, 5])
    torch.manual_seed(3)
    loss, parts = model.loss(x, y)
    assert set(parts) == {"cls", "modal", "noise"}
    torch.testing.assert_close(loss.detach(), torch.tensor(float(parts["cls"]) + 0.5 * float(parts["modal"])
                                                           + 2.0 * float(parts["noise"])),
                               rtol=1e-5, atol=1e-5)
    # the modal term equals the mean of the six NT-Xent terms computed here from h and g
    xs = model.standardizer(x)
    h = model.embed(xs)
    g = {m: model.combinatorial[m](h[m]) for m in DIMS}
    tau = {k: t().detach() for k, t in model.modal_loss.temperatures.items()}
    terms = [nt_xent(h["audio"], h["text"], tau["audio_text"]), nt_xent(h["audio"], h["video"], tau["audio_video"]),
             nt_xent(h["text"], h["video"], tau["text_video"]),
             nt_xent(g["audio"], torch.cat([h["text"], h["video"]], 1), tau["g_audio"]),
             nt_xent(g["text"], torch.cat([h["audio"], h["video"]], 1), tau["g_text"]),
             nt_xent(g["video"], torch.cat([h["audio"], h["text"]], 1), tau["g_video"])]
    assert math.isclose(parts["modal"], float(torch.stack(terms).mean().detach()), rel_tol=1e-5)


def test_noise_uses_each_modalitys_own_schedule():
    model, _ = make(["model.use_modal=false", "noise.text.num_steps=7", "noise.video.schedule=linear"])
    assert model.noise["audio"].num_steps == 100 and model.noise["text"].num_steps == 7
    assert model.noise["video"].schedule == "linear" and model.noise["audio"].schedule == "scaled_linear"


def test_gradients_reach_encoders_and_temperatures():
    model, _ = make()
    loss, _ = model.loss(batch(8), torch.randint(0, 6, (8,)))
    loss.backward()
    assert model.encoders["text"].inp[0].weight.grad.abs().sum() > 0
    assert all(t.log_tau.grad is not None for t in model.modal_loss.temperatures.values())
    assert all(t.log_tau.grad is not None for t in model.noise_loss.temperatures.values())


def test_same_seed_same_model_and_loss():
    a, _ = make(seed=5)
    b, _ = make(seed=5)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    x, y = batch(6), torch.arange(6)
    torch.manual_seed(0)
    la, _ = a.loss(x, y)
    torch.manual_seed(0)
    lb, _ = b.loss(x, y)
    assert torch.equal(la, lb)


def test_two_modalities_work():
    cfg = load_config(None, ["model.name=mrccl", "model.hidden=8", "model.head_hidden=8",
                             "model.vote_weights={audio: 0.5, text: 0.5, fusion: 1.0}"])
    model = build_model("mrccl", {"audio": 5, "text": 6}, 6, cfg.model, noise_cfg=cfg.noise)
    x = {"audio": torch.randn(4, 5), "text": torch.randn(4, 6)}
    loss, parts = model.loss(x, torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(loss) and "modal" in parts


def test_bad_vote_config_is_rejected():
    with pytest.raises(ValueError, match="vote_mode"):
        make(["model.vote_mode=max"])
    with pytest.raises(ValueError, match="unknown heads"):
        make(["model.vote_weights.speech=1.0"])


def info_stats(tmp_path):
    return __import__("json").loads((tmp_path / "run/pretrain/pretrain.json").read_text())["standardizer_from"]


def test_pretrain_streams_saves_and_is_reused(tmp_path, monkeypatch):
    import semimer.train.pretrain as pt
    from semimer.data.layout import load_dataset
    from semimer.data.synth import generate

    ds = generate(tmp_path / "syn", "tiny", 0, fmt="packed")
    # chunks sized in bytes: 100 clips of 24 + 32 + 16 float32 features
    chunk_mb = 100 * (24 + 32 + 16) * 4 / 2**20
    cfg = load_config(None, [f"data.root={ds}", "model.name=mrccl", "model.hidden=16", "pretrain.enabled=true",
                             "pretrain.epochs=2", "pretrain.batch_size=64", "train.progress=false",
                             "pretrain.pool=stream", f"pretrain.chunk_mb={chunk_mb}"])
    data = load_dataset(ds, cfg.data.features())
    seen = []
    orig = data.features

    def spy(names):
        seen.append(len(names))
        return orig(names)

    monkeypatch.setattr(data, "features", spy)
    state = pt.pretrain_for_run(data, cfg, tmp_path / "run")
    pool = len(set(data.unlabeled) | set(data.labeled))
    unlabeled = len(set(data.unlabeled) - set(data.labeled))
    assert max(seen) <= 100, "the pool (and the statistics sample) must be streamed in chunks"
    # statistics sample (unlabeled clips only: no labeled clip shapes them), then every clip once per epoch
    assert sum(seen) == min(pt.STATS_SAMPLE, unlabeled) + 2 * pool
    assert info_stats(tmp_path) == "unlabeled clips"
    assert (tmp_path / "run/pretrain/model.safetensors").is_file()
    assert not any(k.startswith("heads.") for k in state)
    info = __import__("json").loads((tmp_path / "run/pretrain/pretrain.json").read_text())
    assert info["history"][-1]["loss"] < info["history"][0]["loss"] + 1.0
    seen.clear()
    again = pt.pretrain_for_run(data, cfg, tmp_path / "run")
    assert seen == [], "a finished pre-training is reused, not recomputed"
    for k in state:
        assert torch.equal(state[k], again[k])
    # fine-tuning starts from the pre-trained encoders
    from semimer.train.cv import run_cv

    monkeypatch.setattr(data, "features", orig)
    cfg2 = load_config(None, [f"data.root={ds}", "model.name=mrccl", "model.hidden=16", "train.epochs=1",
                              "train.folds=2", "train.progress=false", "train.lr=1e-12"])
    res = run_cv(data, cfg2, tmp_path / "ft", init_state=state)
    w = res.models[0].encoders["audio"].inp[0].weight.detach()
    assert torch.allclose(w, state["encoders.audio.inp.0.weight"], atol=1e-6)

    # the pool in RAM (pretrain.pool=auto: 200 KB fit): read once, and the very same training
    monkeypatch.setattr(data, "features", spy)
    seen.clear()
    cfg_mem = load_config(None, [f"data.root={ds}", "model.name=mrccl", "model.hidden=16", "pretrain.enabled=true",
                                 "pretrain.epochs=2", "pretrain.batch_size=64", "train.progress=false",
                                 f"pretrain.chunk_mb={chunk_mb}"])
    in_ram = pt.pretrain(data, cfg_mem, tmp_path / "mem")
    assert sum(seen) == pool and max(seen) <= 100, "loaded once, in byte-sized pieces"
    assert __import__("json").loads((tmp_path / "mem/pretrain.json").read_text())["pool"] == "memory"
    for k in state:
        torch.testing.assert_close(in_ram[k], state[k], rtol=0, atol=0)


def test_streamed_standardizer_matches_numpy():
    from semimer.models.base import Standardizer

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 5)).astype(np.float32)
    x[:, 4] = 7.0  # constant column -> std 1
    st = Standardizer({"audio": 5})
    st.fit_stream(({"audio": torch.from_numpy(x[i:i + 300])} for i in range(0, 1000, 300)), rows_per_step=128)
    np.testing.assert_allclose(st.audio_mean.numpy(), x.mean(0), rtol=1e-5)
    expect_std = x.astype(np.float64).std(0)
    expect_std[4] = 1.0
    np.testing.assert_allclose(st.audio_std.numpy(), expect_std, rtol=1e-4)
