"""Diffusion-style forward noise for the noise-contrastive term L_noise.

A clean embedding input ``x`` is corrupted with the closed-form forward process of a denoising
diffusion model (DDPM, Ho et al. 2020, arXiv 2006.11239, eq. 4)::

    x̃ = √ᾱ_t · x + √(1 − ᾱ_t) · ε,        ᾱ_t = Π_{s=0..t} (1 − β_s),   t ∈ {0, …, T−1}

with **one timestep t per sample** (drawn uniformly from {0..T−1} when not given), applied as a
single vectorised tensor expression on the input's device and dtype. This is how Fan et al. 2024
("Leveraging Contrastive Learning and Self-Training for Multimodal Emotion Recognition with Limited
Labeled Samples", arXiv 2409.04447) build the noisy views h̃_m; their public fragment drew one t
for the whole batch, looped over the batch in Python and reused the audio schedule for all three
modalities, which this module does not do (see :func:`published_noise_configs`).

β schedules (T = ``num_steps``, β0 = ``beta_start``, β1 = ``beta_end``):

- ``linear``:            β = linspace(β0, β1, T)                                      (Ho et al. 2020)
- ``scaled_linear``:     β = linspace(√β0, √β1, T)²                 (latent-diffusion / diffusers)
- ``squaredcos_cap_v2``: β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), 0.999),
                         ᾱ(s) = cos²(((s + 0.008) / 1.008) · π/2)
                         (improved DDPM cosine schedule, Nichol & Dhariwal 2021, arXiv 2102.09672;
                         β0 and β1 are ignored)
- ``sigmoid``:           β = sigmoid(linspace(−6, 6, T)) · (β1 − β0) + β0

Noise kinds:

- ``gaussian``: ε ~ N(0, I).
- ``impulse``:  ε = m ⊙ sign(n), n ~ N(0, I), m_j ~ Bernoulli(p) independently per entry with
  p = ``impulse_fraction``; so every entry is +1 or −1 with probability p/2 each and 0 with
  probability 1 − p (E[ε] = 0, Var[ε] = p). The count of non-zero entries is random, not exactly
  p·numel.

``betas`` and ``alphas_cumprod`` are computed **and kept** in float64 on the CPU (they are tiny);
:meth:`NoiseScheduler.add_noise` gathers the per-sample coefficients and casts them to the input's
device and dtype, so one scheduler serves any device/dtype (results cached per device/dtype).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch

from semimer.config import NoiseConfig  # re-exported: the settings dataclass lives with the other configs

__all__ = [
    "SCHEDULES",
    "NOISE_KINDS",
    "NoiseScheduler",
    "NoiseConfig",
    "make_betas",
    "published_noise_configs",
]

SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
NOISE_KINDS: tuple[str, ...] = ("gaussian", "impulse")


def _cosine_alpha_bar(s: float) -> float:
    """ᾱ(s) = cos²(((s + 0.008) / 1.008) · π/2), s ∈ [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(num_steps: int, beta_start: float, beta_end: float, schedule: str) -> torch.Tensor:
    """β_0..β_{T−1} of ``schedule`` as a float64 CPU tensor of length ``num_steps`` (see module doc)."""
    T = num_steps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        betas = [min(1.0 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    if schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown noise schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


class NoiseScheduler:
    """Per-sample forward-diffusion noise: x̃ = √ᾱ_t·x + √(1−ᾱ_t)·ε (see the module docstring).

    Args:
        num_steps: T ≥ 1, the number of diffusion steps; timesteps are 0..T−1.
        beta_start, beta_end: β0, β1 ∈ (0, 1) (ignored by ``squaredcos_cap_v2``, still validated).
        schedule: one of :data:`SCHEDULES`.
        kind: one of :data:`NOISE_KINDS`.
        impulse_fraction: p ∈ (0, 1], the probability that an entry of impulse noise is non-zero.

    Attributes:
        betas: float64 CPU tensor (T,), β_t.
        alphas_cumprod: float64 CPU tensor (T,), ᾱ_t = Π_{s≤t}(1 − β_s), strictly decreasing.
    """

    def __init__(
        self,
        num_steps: int = 100,
        beta_start: float = 0.001,
        beta_end: float = 0.1,
        schedule: str = "scaled_linear",
        kind: str = "gaussian",
        impulse_fraction: float = 0.1,
    ) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not (0.0 < float(beta) < 1.0):
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {beta!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {kind!r}; valid: {', '.join(NOISE_KINDS)}")
        if not (0.0 < float(impulse_fraction) <= 1.0):
            raise ValueError(f"impulse_fraction must lie in (0, 1], got {impulse_fraction!r}")

        self.num_steps = num_steps
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.schedule = schedule
        self.kind = kind
        self.impulse_fraction = float(impulse_fraction)

        self.betas: torch.Tensor = make_betas(num_steps, self.beta_start, self.beta_end, schedule)
        self.alphas_cumprod: torch.Tensor = torch.cumprod(1.0 - self.betas, dim=0)
        # (2, T): row 0 = √ᾱ_t, row 1 = √(1 − ᾱ_t); cast copies are cached per (device, dtype).
        self._coef64 = torch.stack([self.alphas_cumprod.sqrt(), (1.0 - self.alphas_cumprod).sqrt()])
        self._coef_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"NoiseScheduler(num_steps={self.num_steps}, beta_start={self.beta_start}, beta_end={self.beta_end}, "
            f"schedule={self.schedule!r}, kind={self.kind!r}, impulse_fraction={self.impulse_fraction})"
        )

    def _coefficients(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        coef = self._coef_cache.get(key)
        if coef is None:
            coef = self._coef64.to(device=device, dtype=dtype)
            self._coef_cache[key] = coef
        return coef

    def sample_timesteps(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``batch_size`` timesteps drawn independently and uniformly from {0..T−1} (int64, on ``device``)."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_steps, (batch_size,), generator=generator, device=gen_device)
        return t.to(device)

    def sample_noise(
        self,
        shape: torch.Size | tuple[int, ...],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """ε of this scheduler's ``kind`` (gaussian: N(0, I); impulse: m ⊙ sign(n), m ~ Bernoulli(p))."""
        gen_device = generator.device if generator is not None else device
        n = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        if self.kind == "impulse":
            keep = torch.rand(shape, generator=generator, device=gen_device) < self.impulse_fraction
            n = torch.sign(n) * keep.to(dtype)
        return n.to(device)

    def add_noise(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return x̃ = √ᾱ_t·x + √(1−ᾱ_t)·ε with one t per sample (the first dim of ``x`` is the batch).

        Args:
            x: floating tensor (B, ...), e.g. (B, D) or (B, T, D).
            timesteps: None (draw one t per sample uniformly from {0..T−1}); an int or 0-dim tensor
                (the same t for every sample); or an integer tensor of shape (B,).
            noise: ε of the same shape as ``x`` (used as given, whatever ``kind``); None draws it.
            generator: optional torch.Generator for the draws (its device may differ from ``x``'s).

        Returns:
            A tensor of ``x``'s shape, device and dtype.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor")
        if x.ndim < 1:
            raise ValueError("x must have a batch dimension (shape (B, ...)), got a 0-dim tensor")
        B = x.shape[0]
        t = self._check_timesteps(timesteps, B, x.device, generator)
        if noise is not None and noise.shape != x.shape:
            raise ValueError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")

        coef = self._coefficients(x.device, x.dtype)[:, t]  # (2, B): √ᾱ_t, √(1−ᾱ_t) per sample
        bshape = (B,) + (1,) * (x.ndim - 1)
        sqrt_abar, sqrt_one_minus_abar = coef[0].view(bshape), coef[1].view(bshape)
        if noise is None:
            # ε is our own fresh tensor: compute in place (saves two (B, ...) temporaries).
            eps = self.sample_noise(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            return eps.mul_(sqrt_one_minus_abar).addcmul_(sqrt_abar, x)
        noise = noise.to(device=x.device, dtype=x.dtype)
        return torch.addcmul(sqrt_one_minus_abar * noise, sqrt_abar, x)

    def _check_timesteps(
        self,
        timesteps: torch.Tensor | int | None,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if timesteps is None:
            return self.sample_timesteps(batch_size, device=device, generator=generator)
        if isinstance(timesteps, bool):
            raise ValueError("timesteps must be an int or an integer tensor, got a bool")
        if isinstance(timesteps, int):
            timesteps = torch.tensor(timesteps)
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch_size)
        if timesteps.shape != (batch_size,):
            raise ValueError(
                f"timesteps must be an int or have shape (B,) = ({batch_size},), got {tuple(timesteps.shape)}"
            )
        if batch_size and (int(timesteps.min()) < 0 or int(timesteps.max()) >= self.num_steps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_steps - 1}], "
                f"got min {int(timesteps.min())}, max {int(timesteps.max())}"
            )
        return timesteps.to(device=device, dtype=torch.long)


def scheduler_from_config(cfg: NoiseConfig) -> NoiseScheduler:
    """The :class:`NoiseScheduler` a :class:`semimer.config.NoiseConfig` describes (validated here)."""
    return NoiseScheduler(**asdict(cfg))


def published_noise_configs() -> dict[str, NoiseConfig]:
    """The published per-modality setting: scaled_linear, β 0.001 → 0.1, T = 100, Gaussian noise.

    One config per modality (the public fragment reused the audio schedule for all three); other
    step counts seen in the authors' runs: (T_a, T_t, T_v) = (180, 40, 140), (220, 80, 180),
    (150, 60, 150).
    """
    return {
        m: NoiseConfig(num_steps=100, beta_start=0.001, beta_end=0.1, schedule="scaled_linear", kind="gaussian")
        for m in ("audio", "text", "video")
    }
