"""Tests of semimer.models.noise against closed forms and reference computations written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semimer.models.noise import NoiseConfig, NoiseScheduler, published_noise_configs, scheduler_from_config

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


# --------------------------------------------------------------------------- reference schedules
def ref_betas(schedule: str, T: int, b0: float, b1: float) -> np.ndarray:
    """The four β schedules, written independently in numpy / math."""
    if schedule == "linear":
        return np.array([b0 + (b1 - b0) * i / (T - 1) if T > 1 else b0 for i in range(T)])
    if schedule == "scaled_linear":
        r0, r1 = math.sqrt(b0), math.sqrt(b1)
        return np.array([(r0 + (r1 - r0) * i / (T - 1) if T > 1 else r0) ** 2 for i in range(T)])
    if schedule == "squaredcos_cap_v2":
        abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
    if schedule == "sigmoid":
        xs = np.linspace(-6, 6, T)
        return 1 / (1 + np.exp(-xs)) * (b1 - b0) + b0
    raise AssertionError(schedule)


def ref_alphas_cumprod(schedule: str, T: int, b0: float, b1: float) -> np.ndarray:
    return np.cumprod(1 - ref_betas(schedule, T, b0, b1))


# --------------------------------------------------------------------------- schedules
def test_linear_hand_values() -> None:
    s = NoiseScheduler(num_steps=3, beta_start=0.1, beta_end=0.3, schedule="linear")
    np.testing.assert_allclose(s.betas.numpy(), [0.1, 0.2, 0.3], rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), [0.9, 0.72, 0.504], rtol=1e-12)


def test_scaled_linear_hand_values() -> None:
    # √β: 0.1, 0.2, 0.3 -> β: 0.01, 0.04, 0.09
    s = NoiseScheduler(num_steps=3, beta_start=0.01, beta_end=0.09, schedule="scaled_linear")
    np.testing.assert_allclose(s.betas.numpy(), [0.01, 0.04, 0.09], rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), [0.99, 0.99 * 0.96, 0.99 * 0.96 * 0.91], rtol=1e-12)


def test_cosine_hand_values_T2() -> None:
    f = [math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2 for s in (0.0, 0.5, 1.0)]
    s = NoiseScheduler(num_steps=2, schedule="squaredcos_cap_v2")
    b = [1 - f[1] / f[0], 0.999]  # the last β hits the 0.999 cap (ᾱ(1) ≈ 0)
    np.testing.assert_allclose(s.betas.numpy(), b, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), [1 - b[0], (1 - b[0]) * (1 - b[1])], rtol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T,b0,b1", [(1, 0.02, 0.02), (10, 0.0001, 0.02), (100, 0.001, 0.1), (180, 0.001, 0.1)])
def test_schedule_matches_reference(schedule: str, T: int, b0: float, b1: float) -> None:
    s = NoiseScheduler(num_steps=T, beta_start=b0, beta_end=b1, schedule=schedule)
    assert s.betas.shape == (T,) and s.alphas_cumprod.shape == (T,)
    np.testing.assert_allclose(s.betas.numpy(), ref_betas(schedule, T, b0, b1), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), ref_alphas_cumprod(schedule, T, b0, b1), rtol=1e-10, atol=1e-15)
    betas = s.betas.numpy()
    assert np.all(betas > 0) and np.all(betas < 1)
    abar = s.alphas_cumprod.numpy()
    assert np.all(np.diff(abar) < 0)  # strictly decreasing
    assert 0 < abar[-1] < abar[0] < 1 or T == 1


def test_published_setting_value() -> None:
    cfgs = published_noise_configs()
    assert set(cfgs) == {"audio", "text", "video"}
    for cfg in cfgs.values():
        assert (cfg.num_steps, cfg.beta_start, cfg.beta_end, cfg.schedule, cfg.kind) == (
            100, 0.001, 0.1, "scaled_linear", "gaussian"
        )
    s = scheduler_from_config(cfgs["text"])
    r = np.linspace(math.sqrt(0.001), math.sqrt(0.1), 100)
    np.testing.assert_allclose(float(s.alphas_cumprod[-1]), np.prod(1 - r**2), rtol=1e-12)


def test_config_build_passes_fields() -> None:
    s = scheduler_from_config(NoiseConfig(num_steps=40, beta_start=0.0001, beta_end=0.02, schedule="linear", kind="impulse"))
    assert (s.num_steps, s.beta_start, s.beta_end, s.schedule, s.kind) == (40, 0.0001, 0.02, "linear", "impulse")


# --------------------------------------------------------------------------- add_noise
def test_statistics_at_fixed_timestep() -> None:
    s = NoiseScheduler(num_steps=100)
    t, c, n = 60, 2.5, 200_000
    x = torch.full((n, 1), c, dtype=torch.float64)
    out = s.add_noise(x, timesteps=t, generator=torch.Generator().manual_seed(0)).squeeze(1)
    abar = ref_alphas_cumprod("scaled_linear", 100, 0.001, 0.1)[t]
    var = 1 - abar
    se_mean = math.sqrt(var / n)
    se_var = var * math.sqrt(2 / (n - 1))
    assert abs(out.mean().item() - math.sqrt(abar) * c) < 5 * se_mean
    assert abs(out.var().item() - var) < 5 * se_var


def test_each_row_uses_its_own_timestep() -> None:
    s = NoiseScheduler(num_steps=50, schedule="linear", beta_start=0.0001, beta_end=0.05)
    abar = ref_alphas_cumprod("linear", 50, 0.0001, 0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, 7, dtype=torch.float64, generator=g)
    eps = torch.randn(16, 5, 7, dtype=torch.float64, generator=g)
    t = torch.randint(0, 50, (16,), generator=g)
    out = s.add_noise(x, timesteps=t, noise=eps)
    for i in range(16):  # per-sample loop reference
        ti = int(t[i])
        expect = math.sqrt(abar[ti]) * x[i] + math.sqrt(1 - abar[ti]) * eps[i]
        torch.testing.assert_close(out[i], expect, rtol=1e-12, atol=1e-12)


def test_drawn_timesteps_differ_within_batch() -> None:
    # x = 1, ε = 0 -> each row holds √ᾱ_t of its own t; invert to recover t per row.
    T, B = 100, 256
    s = NoiseScheduler(num_steps=T)
    abar = ref_alphas_cumprod("scaled_linear", T, 0.001, 0.1)
    x = torch.ones(B, 3, dtype=torch.float64)
    out = s.add_noise(x, noise=torch.zeros_like(x), generator=torch.Generator().manual_seed(2))
    assert torch.all(out == out[:, :1])  # one coefficient per row
    got = out[:, 0].numpy() ** 2
    t = np.abs(got[:, None] - abar[None, :]).argmin(axis=1)
    np.testing.assert_allclose(got, abar[t], rtol=1e-12)
    assert len(np.unique(t)) > 50  # uniform over 100 steps: ~92 distinct expected
    assert t.min() >= 0 and t.max() <= T - 1


def test_generator_reproducible() -> None:
    s = NoiseScheduler()
    x = torch.randn(8, 4)
    a = s.add_noise(x, generator=torch.Generator().manual_seed(3))
    b = s.add_noise(x, generator=torch.Generator().manual_seed(3))
    c = s.add_noise(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 9), (6, 4, 9)])
def test_dtype_and_shape_preserved(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    s = NoiseScheduler()
    x = torch.randn(shape).to(dtype)
    out = s.add_noise(x)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    assert torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_device_preserved() -> None:
    s = NoiseScheduler()
    x = torch.randn(8, 5, device="cuda")
    out = s.add_noise(x, generator=torch.Generator().manual_seed(0))  # CPU generator, CUDA input
    assert out.device == x.device and out.dtype == x.dtype
    out = s.add_noise(x, timesteps=torch.arange(8, device="cuda"))
    assert out.device == x.device


def test_gradient_flows_to_x() -> None:
    # d x̃_i / d x_i = √ᾱ_{t_i}, with drawn and with given noise
    s = NoiseScheduler(num_steps=3, beta_start=0.1, beta_end=0.3, schedule="linear")
    t = torch.tensor([0, 1, 2])
    for noise in (None, torch.randn(3, 4, dtype=torch.float64)):
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        s.add_noise(x, timesteps=t, noise=noise).sum().backward()
        expect = torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64).sqrt()[:, None].expand(3, 4)
        torch.testing.assert_close(x.grad, expect, rtol=1e-12, atol=0)


def test_given_noise_not_modified() -> None:
    s = NoiseScheduler()
    x, eps = torch.randn(4, 3), torch.randn(4, 3)
    eps0 = eps.clone()
    s.add_noise(x, noise=eps)
    assert torch.equal(eps, eps0)


def test_impulse_noise_values_and_fraction() -> None:
    p, n = 0.1, 200_000
    s = NoiseScheduler(kind="impulse", impulse_fraction=p)
    eps = s.sample_noise((n,), generator=torch.Generator().manual_seed(5))
    assert set(eps.unique().tolist()) <= {-1.0, 0.0, 1.0}
    frac = (eps != 0).double().mean().item()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(eps.mean().item()) < 5 * math.sqrt(p / n)  # signs balanced
    # through add_noise: x = 0 -> output = √(1−ᾱ_t)·ε, non-zero on ≈ p of the entries
    out = s.add_noise(torch.zeros(1000, 200), generator=torch.Generator().manual_seed(6))
    assert abs((out != 0).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / out.numel())


def test_explicit_noise_is_used() -> None:
    s = NoiseScheduler(num_steps=3, beta_start=0.1, beta_end=0.3, schedule="linear")
    x = torch.tensor([[1.0], [1.0], [1.0]], dtype=torch.float64)
    eps = torch.tensor([[2.0], [2.0], [2.0]], dtype=torch.float64)
    out = s.add_noise(x, timesteps=torch.tensor([0, 1, 2]), noise=eps)
    expect = [math.sqrt(a) + 2 * math.sqrt(1 - a) for a in (0.9, 0.72, 0.504)]
    np.testing.assert_allclose(out[:, 0].numpy(), expect, rtol=1e-12)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"schedule": "cosine"}, "linear, scaled_linear, squaredcos_cap_v2, sigmoid"),
        ({"kind": "poisson"}, "gaussian, impulse"),
        ({"num_steps": 0}, "num_steps"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"beta_start": 0.0}, "beta_start"),
        ({"beta_end": 1.0}, "beta_end"),
        ({"beta_start": -0.1}, "beta_start"),
        ({"impulse_fraction": 0.0}, "impulse_fraction"),
        ({"impulse_fraction": 1.5}, "impulse_fraction"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoiseScheduler(**kwargs)


def test_add_noise_errors() -> None:
    s = NoiseScheduler(num_steps=10)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="range|lie in"):
        s.add_noise(x, timesteps=10)
    with pytest.raises(ValueError, match="lie in"):
        s.add_noise(x, timesteps=torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="shape"):
        s.add_noise(x, timesteps=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        s.add_noise(x, timesteps=torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        s.add_noise(x, timesteps=torch.zeros(4))
    with pytest.raises(ValueError, match="noise"):
        s.add_noise(x, noise=torch.randn(4, 2))
    with pytest.raises(ValueError, match="floating"):
        s.add_noise(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch"):
        s.add_noise(torch.tensor(1.0))
