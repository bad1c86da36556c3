"""Regularisation for scarce labels: label smoothing, modality dropout, weight EMA, the fine-tuning
learning rate after pre-training — each checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semimer.config import load_config
from semimer.models import build_model
from semimer.models.base import drop_modalities, smoothed_nll


def test_smoothed_nll_equals_torch_label_smoothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g)
    y = torch.randint(5, (7,), generator=g)
    for eps in (0.0, 0.1, 0.3):
        want = F.cross_entropy(logits, y, label_smoothing=eps)
        assert torch.allclose(smoothed_nll(torch.log_softmax(logits, -1), y, eps), want, atol=1e-6)
    # by hand for one row: -(0.9 + 0.1/2)·log p_y - (0.1/2)·log p_other
    logp = torch.log(torch.tensor([[0.7, 0.3]]))
    want = -(0.95 * np.log(0.7) + 0.05 * np.log(0.3))
    assert smoothed_nll(logp, torch.tensor([0]), 0.1).item() == pytest.approx(want, abs=1e-6)


def test_modality_dropout_rate_and_never_all():
    torch.manual_seed(0)
    B, p = 20000, 0.4
    x = {m: torch.ones(B, 3) for m in ("audio", "text", "video")}
    out = drop_modalities(x, ["audio", "text", "video"], p)
    dropped = torch.stack([(out[m] == 0).all(1) for m in x], 1)
    assert not dropped.all(1).any(), "a clip never loses every modality"
    # independent Bernoulli(p) per (clip, modality); an all-dropped clip (prob p^3) gets one back
    assert dropped.float().mean().item() == pytest.approx(p - p ** 3 / 3, abs=0.01)
    assert drop_modalities(x, ["audio", "text", "video"], 0.0) is x
    frames = {"audio": torch.ones(1000, 4, 2), "text": torch.ones(1000, 2)}
    out = drop_modalities(frames, ["audio", "text"], 0.5)
    gone = (out["audio"] == 0).all(2).all(1)
    assert ((out["audio"] == 0).all(2) == gone[:, None]).all(), "a frame-level modality drops as a whole"


def test_ema_weights_are_the_exponential_average_of_the_steps(tiny_data):
    """train.ema_decay: after training (select=fixed), the model holds w_ema with w_ema = w after the
    first optimiser step, then w_ema <- d·w_ema + (1 - d)·w after every later one (torch's
    AveragedModel convention), recomputed here from recorded steps."""
    from semimer.data.layout import load_dataset
    from semimer.data.synth import FEATURE_NAMES
    from semimer.train import fit as fitmod

    data = load_dataset(tiny_data[0], FEATURE_NAMES)
    cfg = load_config(None, ["model.hidden=8", "model.dropout=0.0", "train.epochs=2", "train.batch_size=80",
                             "train.ema_decay=0.9", "train.progress=false"])
    feats = {m: torch.from_numpy(v) for m, v in data.features(data.labeled[:160]).items()}
    y = torch.as_tensor(data.labels[:160])
    torch.manual_seed(0)
    model = build_model("attention", data.dims(), 6, cfg.model)
    model.standardizer.fit(feats)
    snapshots = [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    real = fitmod.run_epoch

    def recording(*a, **kw):
        inner = kw["after_step"]

        def after():
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            inner()

        kw["after_step"] = after
        return real(*a, **kw)

    fitmod.run_epoch = recording
    try:
        fitmod.fit(model, feats, y, None, None, cfg.train, seed=0)
    finally:
        fitmod.run_epoch = real
    assert len(snapshots) == 1 + 2 * 2  # 160 clips / 80 per batch x 2 epochs
    w = snapshots[1]["classifier.weight"]
    for s in snapshots[2:]:
        w = 0.9 * w + 0.1 * s["classifier.weight"]
    assert torch.allclose(model.state_dict()["classifier.weight"], w, atol=1e-6)
    assert not torch.allclose(snapshots[-1]["classifier.weight"], w)
    assert model.label_smoothing == 0.0 and model.modality_dropout == 0.0  # training-only options reset


def test_finetune_lr_scale_applies_only_with_pretrained_weights(tiny_data, tmp_path, monkeypatch):
    from semimer.data.layout import load_dataset
    from semimer.data.synth import FEATURE_NAMES
    from semimer.train import cv as cvmod

    data = load_dataset(tiny_data[0], FEATURE_NAMES)
    seen = []
    monkeypatch.setattr(cvmod, "fit", lambda model, *a, **kw: (seen.append(a[4].lr), cvmod.FitResult(0, 0.0, []))[1])
    cfg = load_config(None, [f"data.root={data.root}", "model.name=mrccl", "model.hidden=8", "train.folds=2",
                             "train.lr=0.002", "pretrain.finetune_lr_scale=0.25", "train.progress=false"])
    cvmod.cross_validate(data, cfg, tmp_path / "a", predict_candidates=False)
    init = build_model("mrccl", data.dims(), 6, cfg.model).state_dict()
    cvmod.cross_validate(data, cfg, tmp_path / "b", init_state=init, predict_candidates=False)
    assert seen == [0.002, 0.002, 0.0005, 0.0005]
    with pytest.raises(ValueError, match="finetune_lr_scale"):
        load_config(None, ["pretrain.finetune_lr_scale=0"])
    with pytest.raises(ValueError, match="label_smoothing"):
        load_config(None, ["train.label_smoothing=1.5"])


def test_weighted_loss_is_the_weighted_mean_of_per_clip_losses():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g)
    y = torch.randint(4, (6,), generator=g)
    w = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 0.25])
    for eps in (0.0, 0.2):
        per = F.cross_entropy(logits, y, label_smoothing=eps, reduction="none")
        want = (w * per).sum() / w.sum()
        assert torch.allclose(smoothed_nll(torch.log_softmax(logits, -1), y, eps, w), want, atol=1e-6)


@pytest.mark.parametrize("name", ["attention", "mrccl"])
def test_a_clip_with_weight_one_among_zeros_gives_its_own_loss(name):
    """loss(batch, y, weight = e_0) equals the loss of clip 0 alone (classification terms only)."""
    cfg = load_config(None, ["model.dropout=0.0", "model.use_modal=false", "model.use_noise=false", "model.hidden=8"])
    torch.manual_seed(0)
    model = build_model(name, {"audio": 5, "text": 3}, 4, cfg.model).eval()
    batch = {"audio": torch.randn(5, 5), "text": torch.randn(5, 3)}
    y = torch.tensor([2, 0, 1, 3, 1])
    w = torch.tensor([1.0, 0, 0, 0, 0])
    got, _ = model.loss(batch, y, w)
    alone, _ = model.loss({m: x[:1] for m, x in batch.items()}, y[:1])
    assert torch.allclose(got, alone, atol=1e-6)


def test_softmatch_weights_by_hand():
    from semimer.semi.pseudo_label import softmatch_weights

    got = softmatch_weights(np.array([0.9, 0.6, 0.4]), mu=0.6, sigma=0.1)
    np.testing.assert_allclose(got, [1.0, 1.0, np.exp(-0.04 / 0.02)])


def test_recipe_softmatch_weights_enter_the_pseudo_labels(tiny_data, tmp_path, monkeypatch):
    from semimer.data.layout import load_dataset
    from semimer.data.synth import FEATURE_NAMES
    from semimer.semi import recipe as recipemod

    data = load_dataset(tiny_data[0], FEATURE_NAMES)
    seen = []
    real = recipemod.cross_validate

    def spy(d, c, out, pseudo=None, **kw):
        seen.append(pseudo)
        return real(d, c, out, pseudo=pseudo, **kw)

    monkeypatch.setattr(recipemod, "cross_validate", spy)
    every_clip = [f"self_train.thresholds.{c}=0.0" for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")]
    cfg = load_config(None, [f"data.root={data.root}", "recipe.vote_members=[attention]", "train.epochs=2",
                             "train.folds=2", "train.progress=false", "model.hidden=16", *every_clip,
                             "self_train.weighting=softmatch", "self_train.rounds=1"])  # the whole pool: some below the mean
    recipemod.run_recipe(data, cfg, tmp_path / "run")
    pk = seen[-1][0]
    assert pk.weights is not None and len(pk.weights) == len(pk.names) > 0
    assert ((pk.weights > 0) & (pk.weights <= 1)).all() and (pk.weights < 1).any()
