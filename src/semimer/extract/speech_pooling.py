"""What the token-pruned speech encoder returns, and how it becomes one utterance embedding.

:class:`PrunedEncoderOutput` is the result of :class:`semimer.extract.pruned_speech.PrunedSpeechEncoder`
(kept tokens, their masks and original frame indices per layer); :func:`pooled_embedding` applies the
MER convention "mean over time of the sum of the last 4 hidden layers" to it, layer by layer over each
layer's own kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from semimer.models.tokens import masked_mean

# ----------------------------------------------------------------------------------------------
@dataclass
class PrunedEncoderOutput:
    """Result of :class:`PrunedSpeechEncoder`.

    Attributes:
        last_hidden_state: ``(B, T', D)`` final features of the kept tokens (padded per batch).
        mask: ``(B, T')`` bool, True on valid (kept) tokens.
        frame_index: ``(B, T')`` long, original frame index (0-based, 20 ms hop for the usual
            conv stack) of each kept token; ``-1`` on padding. Strictly increasing over valid slots.
        kept_counts: ``L`` lists (one per encoder layer) of ``B`` ints: valid tokens in the output
            of layer ``i`` after its pruning step (= tokens that layer ``i+1`` sees).
        input_counts: ``B`` ints, valid frames entering layer 0.
        hidden_states: ``L + 1`` tensors (library convention, see module docstring) or ``None``
            when not requested; entry ``k`` has its own length.
        hidden_masks: valid masks matching ``hidden_states`` (or ``None``).
        hidden_frame_index: frame indices matching ``hidden_states`` (or ``None``).
    """

    last_hidden_state: torch.Tensor
    mask: torch.Tensor
    frame_index: torch.Tensor
    kept_counts: list[list[int]]
    input_counts: list[int]
    hidden_states: tuple[torch.Tensor, ...] | None = None
    hidden_masks: tuple[torch.Tensor, ...] | None = None
    hidden_frame_index: tuple[torch.Tensor, ...] | None = None


def pooled_embedding(
    output: PrunedEncoderOutput, layers: str | int | Sequence[int] = "last4"
) -> torch.Tensor:
    """Utterance-level embedding ``(B, D)`` from a :class:`PrunedEncoderOutput`.

    ``layers="last4"`` is the MER convention "mean over time of the sum of the last 4 hidden
    layers" (``hidden_states[-4:]``, i.e. the outputs of the last 4 encoder layers in the library's
    convention). With pruning the last layers may hold *different* token sets, so the embedding is
    defined as the **sum over those layers of each layer's masked mean over its own valid
    tokens**. Without pruning every layer has the same token set and this equals the usual
    mean-of-sum exactly (the mean is linear).

    ``layers="last"`` pools ``last_hidden_state`` (after the final layer norm in stable-LN models).
    An int or a sequence of ints selects entries of ``hidden_states`` (negative indices allowed).
    """
    if isinstance(layers, str):
        if layers == "last":
            return masked_mean(output.last_hidden_state, output.mask)
        if layers != "last4":
            raise ValueError(f"layers must be 'last4', 'last', an int or a sequence of ints, got {layers!r}")
        layers = [-4, -3, -2, -1]
    elif isinstance(layers, int):
        layers = [layers]
    if output.hidden_states is None:
        raise ValueError("this output has no hidden_states; run the encoder with output_hidden_states=True")
    n = len(output.hidden_states)
    idx = [i % n for i in layers if -n <= i < n]
    if len(idx) != len(list(layers)):
        raise ValueError(f"layer indices {list(layers)} out of range for {n} hidden states")
    pooled = [masked_mean(output.hidden_states[i], output.hidden_masks[i]) for i in idx]
    return torch.stack(pooled, dim=0).sum(dim=0)
