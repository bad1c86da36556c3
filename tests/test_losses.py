"""Tests of semimer.models.losses against explicit-loop references written here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from semimer.models.losses import LearnableTemperature, ModalityContrastiveLoss, NoiseContrastiveLoss, nt_xent


# --------------------------------------------------------------------------- loop reference
def ref_nt_xent(U, V, tau, exp=math.exp, log=math.log, sqrt=math.sqrt):
    """NT-Xent with explicit loops over rows. Works on nested lists of floats (math ops) or on
    torch tensors row by row (torch ops, so autograd can differentiate it)."""
    B = len(U)

    def unit(row):
        n = sqrt(sum(x * x for x in row))
        return [x / n for x in row]

    U = [unit(r) for r in U]
    V = [unit(r) for r in V]

    def s(a, b):
        return sum(x * y for x, y in zip(a, b)) / tau

    total = 0.0
    for A, P in ((U, V), (V, U)):  # anchors from u (positives in v), then the reverse
        for i in range(B):
            num = exp(s(A[i], P[i]))
            den = sum(exp(s(A[i], P[k])) for k in range(B))
            den = den + sum(exp(s(A[i], A[k])) for k in range(B) if k != i)
            total = total - log(num / den)
    return total / (2 * B)


def torch_ref(u, v, tau):
    return ref_nt_xent(list(u), list(v), tau, exp=torch.exp, log=torch.log, sqrt=torch.sqrt)


# --------------------------------------------------------------------------- nt_xent values
@pytest.mark.parametrize("B,d,tau", list(itertools.product([1, 2, 5], [3, 8], [0.07, 0.5, 1.0])))
def test_nt_xent_matches_loop_reference(B: int, d: int, tau: float) -> None:
    g = torch.Generator().manual_seed(100 * B + d)
    u = torch.randn(B, d, dtype=torch.float64, generator=g)
    v = torch.randn(B, d, dtype=torch.float64, generator=g)
    got = nt_xent(u, v, tau).item()
    assert got == pytest.approx(ref_nt_xent(u.tolist(), v.tolist(), tau), rel=1e-10, abs=1e-12)
    # identical views u == v
    got_same = nt_xent(u, u.clone(), tau).item()
    assert got_same == pytest.approx(ref_nt_xent(u.tolist(), u.tolist(), tau), rel=1e-10, abs=1e-12)


def test_nt_xent_float32_close_to_reference() -> None:
    g = torch.Generator().manual_seed(7)
    u, v = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(u, v, 0.2).item() == pytest.approx(ref_nt_xent(u.tolist(), v.tolist(), 0.2), rel=1e-5)


def test_nt_xent_batch_of_one_is_zero() -> None:
    u, v = torch.randn(1, 4), torch.randn(1, 4)
    assert nt_xent(u, v, 0.1).item() == pytest.approx(0.0, abs=1e-7)


def test_nt_xent_closed_form_orthonormal_identical_views() -> None:
    # u = v = orthonormal rows: positive s = 1/τ, the 2(B−1) negatives have s = 0, so
    # ℓ = log(1 + 2(B−1)·e^{−1/τ}); dividing τ twice would give a different value.
    B, tau = 4, 0.5
    u = torch.eye(B, 6, dtype=torch.float64) * 3.0
    expect = math.log(1 + 2 * (B - 1) * math.exp(-1 / tau))
    assert nt_xent(u, u.clone(), tau).item() == pytest.approx(expect, rel=1e-12)


def test_nt_xent_accepts_tensor_temperature() -> None:
    u, v = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert nt_xent(u, v, torch.tensor(0.3, dtype=torch.float64)).item() == pytest.approx(nt_xent(u, v, 0.3).item())


# --------------------------------------------------------------------------- gradients
def test_nt_xent_gradients_match_autograd_of_loop_reference() -> None:
    g = torch.Generator().manual_seed(11)
    u0 = torch.randn(4, 3, dtype=torch.float64, generator=g)
    v0 = torch.randn(4, 3, dtype=torch.float64, generator=g)
    grads = []
    for fn in (lambda u, v, t: nt_xent(u, v, t), torch_ref):
        u, v = u0.clone().requires_grad_(), v0.clone().requires_grad_()
        log_tau = torch.tensor(math.log(0.2), dtype=torch.float64, requires_grad=True)
        loss = fn(u, v, log_tau.exp())
        loss.backward()
        grads.append((u.grad, v.grad, log_tau.grad))
    for got, ref in zip(*grads):
        assert got is not None and torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_learnable_temperature_gets_gradient() -> None:
    temp = LearnableTemperature()
    assert temp().item() == pytest.approx(0.1)
    u, v = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    nt_xent(u, v, temp()).backward()
    for grad in (u.grad, v.grad, temp.log_tau.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert temp.log_tau.grad.abs().item() > 0


def test_learnable_temperature_clamped() -> None:
    temp = LearnableTemperature(init=0.1, min_tau=0.01, max_tau=1.0)
    with torch.no_grad():
        temp.log_tau.fill_(math.log(50.0))
    assert temp().item() == pytest.approx(1.0)
    with torch.no_grad():
        temp.log_tau.fill_(math.log(1e-5))
    assert temp().item() == pytest.approx(0.01)
    with pytest.raises(ValueError):
        LearnableTemperature(init=2.0)
    with pytest.raises(ValueError):
        LearnableTemperature(min_tau=0.0)


# --------------------------------------------------------------------------- the published bug
def test_loss_pulls_pairs_together() -> None:
    """Moving each v_i toward its partner u_i lowers the loss (the buggy public version used the
    self-similarity as the positive, so its loss did not reward aligning the pairs)."""
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(8, 16, dtype=torch.float64, generator=g)
        v = torch.randn(8, 16, dtype=torch.float64, generator=g)
        losses = [nt_xent(u, (1 - a) * v + a * u, 0.1).item() for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        # the pairing matters: shuffled partners give a larger loss than the true ones
        close = u + 0.1 * v
        perm = torch.roll(torch.arange(8), 1)
        assert nt_xent(u, close, 0.1).item() < nt_xent(u, close[perm], 0.1).item()


def test_gradient_step_reduces_pair_distance() -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(6, 10, dtype=torch.float64, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(6, 10, dtype=torch.float64, generator=g), dim=1)
    v.requires_grad_()
    nt_xent(u, v, 0.1).backward()
    v2 = torch.nn.functional.normalize(v.detach() - 0.01 * v.grad, dim=1)
    assert (v2 * u).sum(1).mean() > (v.detach() * u).sum(1).mean()


def test_scale_invariance() -> None:
    g = torch.Generator().manual_seed(9)
    u, v = torch.randn(5, 7, dtype=torch.float64, generator=g), torch.randn(5, 7, dtype=torch.float64, generator=g)
    base = nt_xent(u, v, 0.1).item()
    assert nt_xent(37.0 * u, v, 0.1).item() == pytest.approx(base, rel=1e-12)
    assert nt_xent(u, 0.01 * v, 0.1).item() == pytest.approx(base, rel=1e-12)


# --------------------------------------------------------------------------- errors
def test_nt_xent_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 5), 0.1)
    with pytest.raises(ValueError, match="shape"):
        nt_xent(torch.randn(4, 3), torch.randn(3, 3), 0.1)
    with pytest.raises(ValueError, match="shape"):
        nt_xent(torch.randn(4), torch.randn(4), 0.1)
    with pytest.raises(ValueError, match="B = 0"):
        nt_xent(torch.randn(0, 3), torch.randn(0, 3), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), torch.ones(2))


# --------------------------------------------------------------------------- L_modal / L_noise
def _embeddings(B: int = 4, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mods = ("audio", "text", "video")
    h = {m: torch.randn(B, d, dtype=torch.float64, generator=g, requires_grad=True) for m in mods}
    gg = {m: torch.randn(B, 2 * d, dtype=torch.float64, generator=g, requires_grad=True) for m in mods}
    return h, gg


def _set_taus(module, taus: dict[str, float]) -> None:
    with torch.no_grad():
        for name, tau in taus.items():
            module.temperatures[name].log_tau.fill_(math.log(tau))


def _lst(t: torch.Tensor) -> list:
    return t.detach().tolist()


def test_modality_loss_is_mean_of_six_reference_terms() -> None:
    h, g = _embeddings()
    module = ModalityContrastiveLoss().double()
    taus = {"audio_text": 0.1, "audio_video": 0.2, "text_video": 0.3, "g_audio": 0.4, "g_text": 0.5, "g_video": 0.6}
    _set_taus(module, taus)
    a, t, v = (_lst(h[m]) for m in ("audio", "text", "video"))
    cat = lambda x, y: [r1 + r2 for r1, r2 in zip(x, y)]  # noqa: E731  row-wise [x; y]
    expect = {
        "audio_text": ref_nt_xent(a, t, 0.1),
        "audio_video": ref_nt_xent(a, v, 0.2),
        "text_video": ref_nt_xent(t, v, 0.3),
        "g_audio": ref_nt_xent(_lst(g["audio"]), cat(t, v), 0.4),
        "g_text": ref_nt_xent(_lst(g["text"]), cat(a, v), 0.5),
        "g_video": ref_nt_xent(_lst(g["video"]), cat(a, t), 0.6),
    }
    loss, terms = module(h, g)
    assert set(terms) == set(expect)
    for name, val in expect.items():
        assert isinstance(terms[name], float)
        assert terms[name] == pytest.approx(val, rel=1e-10)
    assert loss.item() == pytest.approx(sum(expect.values()) / 6, rel=1e-10)

    loss.backward()
    for name, temp in module.temperatures.items():
        assert temp.log_tau.grad is not None and temp.log_tau.grad.abs().item() > 0, name
    for x in list(h.values()) + list(g.values()):
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_modality_loss_subset_of_modalities() -> None:
    h, g = _embeddings(seed=1)
    module = ModalityContrastiveLoss().double()
    _set_taus(module, {"audio_video": 0.1})  # exact float64 τ (the float32 init rounds log 0.1)
    loss, terms = module({"audio": h["audio"], "video": h["video"]}, g)
    assert list(terms) == ["audio_video"]
    assert loss.item() == pytest.approx(ref_nt_xent(_lst(h["audio"]), _lst(h["video"]), 0.1), rel=1e-10)
    loss, terms = module(h)  # no g: only the three pair terms
    assert sorted(terms) == ["audio_text", "audio_video", "text_video"]
    with pytest.raises(ValueError, match="no term"):
        module({"audio": h["audio"]})
    with pytest.raises(ValueError, match="unknown"):
        module({"audio": h["audio"], "speech": h["text"]})


def test_noise_loss_is_mean_of_three_reference_terms() -> None:
    h, _ = _embeddings(seed=2)
    g = torch.Generator().manual_seed(5)
    h_noisy = {m: (x.detach() + 0.3 * torch.randn(x.shape, dtype=x.dtype, generator=g)).requires_grad_() for m, x in h.items()}
    module = NoiseContrastiveLoss().double()
    taus = {"audio": 0.15, "text": 0.25, "video": 0.9}
    _set_taus(module, taus)
    loss, terms = module(h, h_noisy)
    expect = {m: ref_nt_xent(_lst(h[m]), _lst(h_noisy[m]), taus[m]) for m in taus}
    for m, val in expect.items():
        assert terms[m] == pytest.approx(val, rel=1e-10)
    assert loss.item() == pytest.approx(sum(expect.values()) / 3, rel=1e-10)
    loss.backward()
    for name, temp in module.temperatures.items():
        assert temp.log_tau.grad is not None and temp.log_tau.grad.abs().item() > 0, name

    loss2, terms2 = module({"text": h["text"]}, h_noisy)
    assert list(terms2) == ["text"] and loss2.item() == pytest.approx(expect["text"], rel=1e-10)
