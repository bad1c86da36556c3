"""Missing modalities in the models: a clip without a modality (NaN row / no frames) is left out of
fusion, voting and contrastive terms — each checked against a computation by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semimer.config import load_config
from semimer.data.ragged import Ragged, collate
from semimer.models import build_model
from semimer.models.base import Standardizer, drop_modalities
from semimer.models.losses import ModalityContrastiveLoss, NoiseContrastiveLoss, nt_xent

DIMS = {"audio": 6, "text": 5, "video": 4}


def cfg_for(name, overrides=()):
    return load_config(None, [f"model.name={name}", "model.hidden=16", "model.head_hidden=8", "model.dropout=0.0",
                              *overrides])


def make(name, overrides=(), seed=0, levels=None):
    cfg = cfg_for(name, overrides)
    torch.manual_seed(seed)
    return build_model(name, DIMS, 6, cfg.model, noise_cfg=cfg.noise, levels=levels).eval(), cfg


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}


def with_gaps(b, gaps):
    """``gaps``: modality -> clip indices without it (NaN rows)."""
    out = {m: x.clone() for m, x in b.items()}
    for m, idx in gaps.items():
        out[m][idx] = float("nan")
    return out


def test_nt_xent_with_a_validity_mask_equals_the_loss_on_the_valid_rows():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    valid = torch.tensor([True, False, True, True, False, True])
    assert torch.allclose(nt_xent(u, v, 0.2, valid), nt_xent(u[valid], v[valid], 0.2), atol=1e-6)
    assert nt_xent(u, v, 0.2, torch.zeros(6, dtype=torch.bool)).item() == 0.0
    assert nt_xent(u, v, 0.2, torch.tensor([True] + [False] * 5)).item() == 0.0  # one pair: no negative
    # gradients stay finite and do not reach invalid rows
    u.requires_grad_(True)
    nt_xent(u, v, 0.2, valid).backward()
    assert torch.isfinite(u.grad).all() and torch.equal(u.grad[~valid], torch.zeros(2, 4))


def test_modal_loss_with_an_absent_pair_equals_the_remaining_terms_by_hand():
    torch.manual_seed(0)
    loss = ModalityContrastiveLoss()
    h = {m: torch.randn(6, 3) for m in DIMS}
    g = {m: torch.randn(6, 6) for m in DIMS}
    present = {"audio": torch.ones(6, dtype=torch.bool), "text": torch.ones(6, dtype=torch.bool),
               "video": torch.tensor([False, True, False, True, True, False])}
    got, parts = loss(h, g, present)
    tau = {k: t() for k, t in loss.temperatures.items()}
    v = present["video"]
    by_hand = [nt_xent(h["audio"], h["text"], tau["audio_text"]),
               nt_xent(h["audio"][v], h["video"][v], tau["audio_video"]),
               nt_xent(h["text"][v], h["video"][v], tau["text_video"]),
               nt_xent(g["audio"][v], torch.cat([h["text"], h["video"]], 1)[v], tau["g_audio"]),
               nt_xent(g["text"][v], torch.cat([h["audio"], h["video"]], 1)[v], tau["g_text"]),
               nt_xent(g["video"][v], torch.cat([h["audio"], h["text"]], 1)[v], tau["g_video"])]
    assert got.item() == pytest.approx(torch.stack(by_hand).mean().item(), abs=1e-6)
    # video absent for every clip: only the audio-text term is left, the mean is over it alone
    present["video"] = torch.zeros(6, dtype=torch.bool)
    got, parts = loss(h, g, present)
    assert got.item() == pytest.approx(nt_xent(h["audio"], h["text"], tau["audio_text"]).item(), abs=1e-6)
    assert parts["audio_video"] == 0.0
    noise = NoiseContrastiveLoss()
    hn = {m: torch.randn(6, 3) for m in DIMS}
    got, _ = noise(h, hn, present)
    tn = {k: t() for k, t in noise.temperatures.items()}
    want = (nt_xent(h["audio"], hn["audio"], tn["audio"]) + nt_xent(h["text"], hn["text"], tn["text"])) / 2
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


def test_standardizer_statistics_ignore_missing_rows_and_zero_them():
    x = torch.tensor([[1.0, 2.0], [float("nan")] * 2, [3.0, 6.0]])
    st = Standardizer({"audio": 2})
    st.fit({"audio": x})
    ref = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(st.audio_mean.numpy(), ref.mean(0))
    np.testing.assert_allclose(st.audio_std.numpy(), ref.std(0))
    out = st({"audio": x})
    assert out["audio_present"].tolist() == [True, False, True] and torch.equal(out["audio"][1], torch.zeros(2))


def test_attention_fusion_weights_sum_to_one_over_the_present_modalities():
    model, _ = make("attention")
    b = with_gaps(batch(), {"video": [0, 1, 2], "audio": [2, 5]})
    with torch.no_grad():
        out = model(b)
    alpha = out["attention"]
    assert torch.isfinite(out["probs"]).all()
    assert torch.allclose(alpha.sum(1), torch.ones(8), atol=1e-6)
    assert torch.equal(alpha[[0, 1, 2], 2], torch.zeros(3)) and torch.equal(alpha[[2, 5], 0], torch.zeros(2))
    # a clip's output does not depend on the gaps of the other clips in its batch
    with torch.no_grad():
        alone = model({m: x[[3]] for m, x in b.items()})
    torch.testing.assert_close(alone["probs"][0], out["probs"][3])


def test_mrccl_votes_over_the_heads_the_clip_has_by_hand():
    model, cfg = make("mrccl")
    b = with_gaps(batch(), {"video": [0, 3], "text": [3]})
    with torch.no_grad():
        out = model(b)
    w = {k: float(v) for k, v in cfg.model.vote_weights.items()}
    sm = {k: torch.softmax(v, -1) for k, v in out["head_logits"].items()}
    for i in range(8):
        heads = ["audio", "fusion"] + (["text"] if i != 3 else []) + (["video"] if i not in (0, 3) else [])
        want = sum(w[k] * sm[k][i] for k in heads) / sum(w[k] for k in heads)
        torch.testing.assert_close(out["probs"][i], want)
    # a present modality's head does not depend on the other modalities
    full = batch()
    with torch.no_grad():
        ref = model(full)
    torch.testing.assert_close(out["head_logits"]["audio"], ref["head_logits"]["audio"])


@pytest.mark.parametrize("name", ["attention", "mrccl", "linear"])
def test_a_modality_missing_for_every_clip_gives_finite_losses_and_gradients(name):
    model, _ = make(name)
    model.train()
    b = with_gaps(batch(), {"video": list(range(8)), "text": [1]})
    model.standardizer.fit(batch(seed=5))
    y = torch.arange(8) % 6
    if name == "linear":
        out = model(b)
        assert torch.isfinite(out["probs"]).all()
        return
    loss, parts = model.loss(b, y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(torch.as_tensor(v)).all() for v in parts.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if name == "mrccl":
        model.zero_grad()
        closs, _ = model.contrastive_loss(b)
        closs.backward()
        assert torch.isfinite(closs)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_frame_level_missing_clips_are_absent_in_fusion():
    levels = {"audio": "frame", "text": "utt", "video": "utt"}
    model, _ = make("mrccl", levels=levels)
    audio = Ragged.from_arrays([np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32),
                                np.zeros((0, 6), np.float32)])
    b = collate({"audio": audio, "text": torch.randn(2, 5), "video": torch.randn(2, 4)})
    with torch.no_grad():
        out = model(b)
    assert out["heads_present"][0].tolist() == [True, False]
    assert torch.equal(out["h"]["audio"][1], torch.zeros(16)) and torch.isfinite(out["probs"]).all()


def test_modality_dropout_never_removes_the_last_present_modality():
    torch.manual_seed(0)
    B = 4000
    st = Standardizer({m: 2 for m in DIMS})
    x = {m: torch.ones(B, 2) for m in DIMS}
    x["video"][: B // 2] = float("nan")  # half the clips have no video
    x["text"][: B // 4] = float("nan")  # a quarter have audio only
    out = drop_modalities(st(x), list(DIMS), 0.5)
    present = torch.stack([out[m + "_present"] for m in DIMS], 1)
    assert present.any(1).all(), "every clip keeps a modality"
    assert not present[: B // 2, 2].any(), "an absent modality stays absent"
    for m in DIMS:
        assert torch.equal(out[m][~out[m + "_present"]], torch.zeros(int((~out[m + "_present"]).sum()), 2))
    # clips with every modality: Bernoulli(0.5) per modality, an all-dropped draw gives one back
    full = present[B // 2:]
    assert (~full).float().mean().item() == pytest.approx(0.5 - 0.5 ** 3 / 3, abs=0.02)
    # audio-only clips are never touched
    assert present[: B // 4, 0].all()


# ------------------------------------------------------------------------------- end to end
def test_synth_gaps_are_drawn_at_their_rates_and_never_remove_every_modality():
    from semimer.data.synth import SynthConfig, draw_gaps

    cfg = SynthConfig(gaps={"labeled": {"video": 0.3}, "pool": {"video": 0.5, "audio": 0.2, "text": 0.9}})
    is_lab = np.arange(20000) < 5000
    has = draw_gaps(cfg, is_lab, seed=0)
    assert has.any(1).all()
    assert (~has[is_lab, 2]).mean() == pytest.approx(0.3, abs=0.02) and has[is_lab, :2].all()
    # pool: a clip whose three draws remove everything gets one back, so the rates are a little lower
    assert (~has[~is_lab, 1]).mean() == pytest.approx(0.9 - 0.5 * 0.2 * 0.9 / 3, abs=0.02)
    with pytest.raises(ValueError, match="unknown"):
        draw_gaps(SynthConfig(gaps={"pool": {"face": 0.1}}), is_lab, 0)


@pytest.mark.parametrize("frames", [False, True])
def test_recipe_trains_and_predicts_on_a_dataset_with_gaps(tmp_path, frames):
    """Gaps everywhere (labeled, pool, candidates), pre-training, self-training, two members:
    finite probabilities for every clip, counts saved, complete-only training drops the gaps."""
    import json

    from semimer.config import load_config
    from semimer.data.layout import load_configured
    from semimer.data.synth import generate
    from semimer.semi.recipe import run_recipe

    over = {"n_labeled": 120, "n_unlabeled": 300, "n_test": 60, "n_candidates": 100,
            "dims": {"audio": 12, "text": 16, "video": 8}, "latent_dim": 6, "n_speakers": 10,
            "gaps": {"labeled": {"video": 0.3, "audio": 0.1}, "pool": {"video": 0.3, "audio": 0.1}}}
    if frames:
        over["frames"] = {"audio": [3, 8]}
    ds = generate(tmp_path / "syn", "tiny", seed=0, **over)
    feats = {"audio": "audio-FRA" if frames else "audio-UTT", "text": "text-UTT", "video": "video-UTT"}
    fast = ["train.epochs=2", "train.folds=2", "train.progress=false", "pretrain.epochs=1", "model.hidden=16",
            "model.head_hidden=8", "train.batch_size=32", "pretrain.batch_size=64", "self_train.rounds=1",
            "self_train.selection=topk", "train.modality_dropout=0.2", "model.frame_layers=1",
            "recipe.vote_members=[mrccl,attention]"]
    cfg = load_config(None, [f"data.root={ds}", *(f"data.{m}={f}" for m, f in feats.items()), *fast], preset="recipe")
    data = load_configured(cfg.data)
    assert data.missing["labeled"]["video"] > 20 and data.missing["candidates"]["video"] > 10
    s = run_recipe(data, cfg, tmp_path / "run", tmp_path / "syn" / "test-labels.csv")
    for stage in ("round_0", "round_1", "member_attention"):
        assert np.isfinite(s["stages"][stage]["cv_waf"]["mean"]) and np.isfinite(s["stages"][stage]["test"]["waf"])
    saved = json.loads((tmp_path / "run" / "round_0" / "data.json").read_text())
    assert saved["missing"] == data.missing
    with open(tmp_path / "run" / "predictions.csv") as fh:
        rows = fh.read().splitlines()[1:]
    assert len(rows) == len(data.candidates)
    assert all(np.isfinite(float(v)) for r in rows for v in r.split(",")[2:])
    if not frames:
        cfg_drop = load_config(None, [f"data.root={ds}", "data.incomplete=drop", *fast], preset="recipe")
        dropped = load_configured(cfg_drop.data)
        assert len(dropped.labeled) == len(data.labeled) - data.missing["labeled"]["video"] - data.missing["labeled"]["audio"] \
            + sum(1 for n in data.labeled if n not in dropped.stores["video"] and n not in dropped.stores["audio"])
        assert "video" in dropped.missing["candidates"] and "labeled" not in dropped.missing
