"""Pure token selection for progressive token pruning (no Hugging Face code here).

Used by the frame encoders of the models (:mod:`semimer.models.frame`) and by the pruned speech
encoder wrapper (:mod:`semimer.extract.pruned_speech`, whose docstring explains the design): score
each valid token by the attention it receives, keep the top ``ceil(r * N_valid)`` per clip, in time
order.
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention_scores", "check_keep_rate", "gather_tokens", "kept_count", "masked_mean",
           "select_by_scores", "select_tokens"]

# ``ceil(r * n)`` in floating point can land just above an integer (0.7 * 10 = 7.000000000000001),
# which would keep one token too many; the slack absorbs that rounding noise.
_CEIL_SLACK = 1e-6


# ----------------------------------------------------------------------------------------------
# Pure selection helpers
# ----------------------------------------------------------------------------------------------
def kept_count(n_valid: int, keep_rate: float) -> int:
    """Number of tokens kept from ``n_valid`` valid ones: ``ceil(keep_rate * n_valid)``, at least 1.

    ``n_valid = 0`` gives 0. The ceiling tolerates floating-point noise (``0.7 * 10`` keeps 7).
    """
    check_keep_rate(keep_rate)
    if n_valid <= 0:
        return 0
    return int(min(n_valid, max(1, math.ceil(keep_rate * n_valid - _CEIL_SLACK))))


def attention_scores(attn: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention received by each token: ``s[b, j] = sum_h sum_{i valid} attn[b, h, i, j]``.

    Args:
        attn: attention probabilities ``(B, H, N, N)`` (rows = queries, columns = keys).
        mask: ``(B, N)`` bool, True for valid tokens; ``None`` means all valid.

    Returns:
        ``(B, N)`` float scores; invalid tokens get ``-inf`` so that they are never selected.
    """
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must have shape (B, H, N, N), got {tuple(attn.shape)}")
    attn = attn.detach()
    if mask is None:
        return attn.sum(dim=(1, 2)).float()
    mask = mask.to(device=attn.device, dtype=torch.bool)
    if mask.shape != (attn.shape[0], attn.shape[-1]):
        raise ValueError(f"mask must have shape {(attn.shape[0], attn.shape[-1])}, got {tuple(mask.shape)}")
    # sum over heads first (cheap), then over valid query rows only
    per_query = attn.sum(dim=1).float()  # (B, N_query, N_key)
    scores = torch.einsum("bij,bi->bj", per_query, mask.float())
    return scores.masked_fill(~mask, float("-inf"))


def select_by_scores(
    scores: torch.Tensor, mask: torch.Tensor | None, keep_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the top ``ceil(keep_rate * N_valid)`` valid tokens of each row, in time order.

    Ties are broken in favour of the earlier frame (stable sort), so the result is deterministic.

    Args:
        scores: ``(B, N)`` token scores (higher = keep).
        mask: ``(B, N)`` bool valid mask (``None`` = all valid). Need not be a contiguous prefix.
        keep_rate: ``r`` in ``(0, 1]``.

    Returns:
        ``(indices, new_mask)``: ``indices`` is ``(B, K)`` long with ``K = max_b kept_b``; row ``b``
        lists its ``kept_b`` kept positions in increasing order in ``indices[b, :kept_b]`` (the
        remaining slots point at arbitrary dropped positions and are padding). ``new_mask`` is
        ``(B, K)`` bool, True on the first ``kept_b`` slots.
    """
    check_keep_rate(keep_rate)
    batch, n = scores.shape
    device = scores.device
    if mask is None:
        mask = torch.ones(batch, n, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    n_valid = mask.sum(dim=1)
    kept = torch.ceil(n_valid.double() * keep_rate - _CEIL_SLACK).long()
    kept = torch.minimum(torch.clamp(kept, min=1), n_valid)  # at least 1 (unless no valid token)
    k_max = int(kept.max()) if batch > 0 else 0

    scores = scores.float().masked_fill(~mask, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # best first
    rank_kept = torch.arange(n, device=device).unsqueeze(0) < kept.unsqueeze(1)  # (B, N)
    keep_mask = torch.zeros_like(mask).scatter(1, order, rank_kept)
    # kept positions first, each group in time order (stable sort on 0 = kept / 1 = dropped)
    indices = torch.sort((~keep_mask).to(torch.uint8), dim=1, stable=True).indices[:, :k_max]
    new_mask = torch.arange(k_max, device=device).unsqueeze(0) < kept.unsqueeze(1)
    return indices, new_mask


def select_tokens(
    attn: torch.Tensor, mask: torch.Tensor | None, keep_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure token selection from attention probabilities.

    Scores each valid token by the attention it receives from all heads and all *valid* queries
    (:func:`attention_scores`), then keeps the top ``ceil(keep_rate * N_valid)`` per clip, sorted in
    time (:func:`select_by_scores`).

    Args:
        attn: ``(B, H, N, N)`` attention probabilities.
        mask: ``(B, N)`` bool valid mask, or ``None`` (all valid).
        keep_rate: ``r`` in ``(0, 1]``.

    Returns:
        ``(indices (B, K) long, new_mask (B, K) bool)``, see :func:`select_by_scores`.
    """
    return select_by_scores(attention_scores(attn, mask), mask, keep_rate)


def check_keep_rate(keep_rate: float) -> None:
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, (int, float)):
        raise ValueError(f"keep_rate must be a number in (0, 1], got {keep_rate!r}")
    if not (0.0 < float(keep_rate) <= 1.0):
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x[b, indices[b, k]]`` for ``x`` of shape (B, N) or (B, N, D)."""
    if x.dim() == 2:
        return x.gather(1, indices)
    return x.gather(1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (B, T, D) over the valid positions of ``mask`` (B, T) -> (B, D)."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(dtype=x.dtype, device=x.device).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
