"""``train.precision``: the choice of autocast dtype from device capabilities (a pure function,
tested without a GPU), its place in run fingerprints, and the autocast / gradient-scaler paths."""

from __future__ import annotations

import pytest
import torch

from semimer.config import load_config
from semimer.utils import choose_precision


@pytest.mark.parametrize("requested, device, bf16, expected", [
    ("auto", "cpu", False, "fp32"),
    ("auto", "cpu", True, "fp32"),  # CPU autocast is opt-in: fp32 is exact and usually faster
    ("auto", "cuda", True, "bf16"),
    ("auto", "cuda", False, "fp32"),  # e.g. a V100/T4: fp16 needs a scaler, so ask for it explicitly
    ("bf16", "cpu", False, "bf16"),
    ("bf16", "cuda", True, "bf16"),
    ("fp16", "cuda", False, "fp16"),
    ("fp16", "cuda", True, "fp16"),
    ("fp32", "cuda", True, "fp32"),
    ("FP32", "cpu", False, "fp32"),
])
def test_precision_choice(requested, device, bf16, expected):
    assert choose_precision(requested, device, bf16) == expected


@pytest.mark.parametrize("requested, device, bf16, match", [
    ("fp16", "cpu", False, "needs a CUDA device"),
    ("bf16", "cuda", False, "does not support bfloat16"),
    ("half", "cpu", False, "train.precision must be one of"),
])
def test_impossible_precisions_are_clear_errors(requested, device, bf16, match):
    with pytest.raises(ValueError, match=match):
        choose_precision(requested, device, bf16)


def test_config_validates_precision():
    assert load_config(None, []).train.precision == "auto"
    with pytest.raises(ValueError, match="train.precision"):
        load_config(None, ["train.precision=int8"])


def test_precision_in_fingerprints_only_when_it_changes_results():
    from semimer.train import run_state

    auto = run_state.settings(load_config(None, ["train.device=cpu"]))
    fp32 = run_state.settings(load_config(None, ["train.device=cpu", "train.precision=fp32"]))
    bf16 = run_state.settings(load_config(None, ["train.device=cpu", "train.precision=bf16"]))
    assert auto == fp32, "auto resolves to fp32 on a CPU: the same runs (and the fingerprints made before the key)"
    assert "precision" not in fp32["train"] and bf16["train"]["precision"] == "bf16"
    speed = run_state.settings(load_config(None, ["train.device=cpu", "train.threads=1", "train.compile=true",
                                                  "train.deterministic=true", "pretrain.pool=stream",
                                                  "pretrain.chunk_mb=8"]))
    assert speed == auto, "threads, compilation, determinism and pool handling do not change results"


def _tiny_model():
    from semimer.models import build_model

    cfg = load_config(None, ["model.name=mrccl", "model.hidden=16", "model.head_hidden=8"])
    torch.manual_seed(0)
    dims = {"audio": 12, "text": 10, "video": 8}
    model = build_model("mrccl", dims, 4, cfg.model, noise_cfg=cfg.noise)
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(96, d, generator=g) for m, d in dims.items()}
    y = torch.randint(0, 4, (96,), generator=g)
    model.standardizer.fit(x)
    return model, x, y


def test_nt_xent_is_computed_in_float32_under_autocast():
    from semimer.models.losses import nt_xent

    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    ref = nt_xent(u, v, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nt_xent(u.bfloat16(), v.bfloat16(), torch.tensor(0.05))
    assert got.dtype == torch.float32
    # only the bfloat16 rounding of the inputs differs, not a bfloat16 similarity matrix divided by 0.05
    assert float(got) == pytest.approx(float(ref), rel=2e-2)


def test_bf16_autocast_trains_and_reports_float_losses():
    from semimer.train.accel import Accel, adamw
    from semimer.train.fit import predict_tensors, run_epoch

    model, x, y = _tiny_model()
    accel = Accel(device=torch.device("cpu"), precision="bf16")
    opt = adamw(model.parameters(), 1e-3, 0.0)
    model.train()
    sums, steps = run_epoch(model, x, 96, 32, torch.Generator().manual_seed(0), opt, model.loss, y=y, accel=accel)
    assert steps == 3 and {"loss", "cls", "modal", "noise"} <= set(sums)
    assert all(isinstance(v, float) and v == v for v in sums.values())
    p = predict_tensors(model, x, 64, accel=accel)
    assert p.dtype.name == "float32" and abs(p.sum(1) - 1).max() < 1e-3


def test_gradient_scaler_path_gives_the_unscaled_update():
    """fp16 runs through a GradScaler (CUDA); the same code path with a CPU scaler and float32 math
    must give the update of no scaler at all (power-of-two scaling is exact)."""
    from semimer.train.fit import run_epoch

    states = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        model, x, y = _tiny_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.manual_seed(5)
        run_epoch(model, x, 96, 32, torch.Generator().manual_seed(0), opt, model.loss, y=y, scaler=scaler)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], rtol=0, atol=1e-7)
