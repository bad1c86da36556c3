"""Rate-based progressive token pruning for HuBERT / wav2vec 2.0 / WavLM speech encoders.

Design (``docs/method.md``, section "Progressive token pruning for long speech")
-------------------------------------------------------------------------------
Speech encoders emit 50 frames per second, so a 16 s clip is 800 tokens and every transformer
layer pays O(N^2) attention plus O(N) feed-forward on all of them. From a chosen layer on, after
each layer we score every *valid* token ``j`` by the attention it receives,

    s_j = sum_heads sum_{valid queries i} A[h, i, j],

keep the top ``ceil(r * N_valid)`` tokens of each clip (``r`` = keep rate, at least one token),
restore their time order, and carry the hidden states, the padding mask and the original frame
indices forward. The original design notes give three rules, all followed here:

* **pruning, not merging.** Token Merging (ToMe; Bolya et al., "Token Merging: Your ViT but
  Faster", ICLR 2023) averages similar tokens via bipartite soft matching. In speech many attention
  scores are ~0 (frames that do not affect each other), so the dropped tokens carry little that the
  kept ones need, while the matching step of merging costs extra time on sequences that are
  already long. Pruning is a gather: no similarity matrix, no weighted averages.
* **a rate, not a threshold.** A score threshold gives every clip a data-dependent count that
  cannot be planned for, and *masking* pruned tokens instead of removing them gives no speed-up.
  Here the kept tokens are physically re-packed into a smaller padded ``(B, max_kept, D)`` tensor
  with a new key-padding mask, so batching still works and compute shrinks.
* **a rate, not a fixed count.** Speech lengths vary a lot (unlike 224x224 images with a fixed
  patch count); with a rate, longer utterances drop more tokens.

Layer indexing (precise)
------------------------
``prune_from_layer = l0`` with ``0 <= l0 <= L`` (``L`` = number of encoder layers). Layers are
0-based. The pruning step runs **after every layer whose index ``i >= l0``**, using that layer's
own attention probabilities. Equivalently: when ``l0`` layers have already been applied, the next
layer (index ``l0``) still sees every token and is the first one whose attention is used for
scoring; layers ``l0+1 .. L-1`` run on progressively fewer tokens.

* ``l0 = L`` disables pruning (output equals the library model's).
* ``l0 = L-1`` prunes only the output of the last layer: no speed-up, only the returned token set
  shrinks (useful to check that gathering is exact).
* ``keep_rate = 1`` keeps every token; the pruning steps are then skipped entirely (no attention
  weights are materialised) and the output equals the library model's.

After ``k`` pruning steps a clip with ``n`` valid frames keeps ``n_k = ceil(r * n_{k-1})`` tokens
(``n_0 = n``, clamped to ``[1, n_{k-1}]``); see :func:`kept_count`.

What is reused from ``transformers`` (wrapping, not forking)
------------------------------------------------------------
The wrapper calls the library's own modules: the convolutional feature extractor, the feature
projection, SpecAugment masking (a no-op in eval mode), the encoder's positional convolution,
layer norm and dropout, and each encoder layer module. Only the loop over the layers is ours, so
that the token set can change between layers. Both encoder variants are handled:

* post-LN (``do_stable_layer_norm=False``, HuBERT/wav2vec2-base style): layer norm after the
  positional embedding, before the first layer;
* pre-LN "stable layer norm" (wav2vec2-large / HuBERT-large style): no layer norm before the
  layers, a final layer norm after the last layer.

Attention weights: HuBERT and wav2vec 2.0 dispatch attention through
``config._attn_implementation``. Only the ``eager`` path returns probabilities, so the layers that
score tokens (index ``>= l0``) run with ``eager`` while the earlier layers keep the model's own
implementation (``sdpa`` by default, which is faster). The switch is done by setting
``config._attn_implementation`` for the duration of one forward call and restoring it afterwards
(``try/finally``); do not run the *same model object* concurrently in other threads while a pruned
forward is in flight. Implementations other than ``eager``/``sdpa`` (flash, flex, kernels) use a
different mask format, so the wrapper runs ``sdpa`` for non-scoring layers in that case.

WavLM: its attention always returns (head-averaged) probabilities, which is enough for the score
(the head sum is the head average times ``H``: same ranking). Its gated *relative position bias*
is computed once by layer 0 for the full sequence and reused by later layers; after pruning, the
bias is gathered at the kept tokens' **original** frame indices, so every remaining pair of
tokens still sees the bias of its true time distance. WavLM is therefore supported with pruning.

Not supported: wav2vec 2.0 with ``add_adapter=True`` (its output adapter is a strided
convolution over time, meaningless on a non-contiguous token set) - a ``ValueError`` says so.

Output conventions
------------------
``hidden_states`` follows the library's 5.x convention: entry 0 is the input of layer 0 (after
positional embedding, [layer norm], dropout), entry ``i+1`` is the output of layer ``i`` - here
*after* layer ``i``'s pruning step, i.e. exactly the token set handed to layer ``i+1``. For the
stable-layer-norm variant the last entry is *before* the final layer norm (as in the library) and
``last_hidden_state`` is after it. Because entries can have different lengths, each comes with its
own ``hidden_masks[k]`` and ``hidden_frame_index[k]``. Values at padding positions are unspecified
(use the masks).

Training mode: dropout and LayerDrop behave as in the library; a layer skipped by LayerDrop
produces no attention and therefore no pruning step. Scores come from the returned attention
probabilities (after attention dropout in training mode); the selection itself is not
differentiable, but gradients flow through the kept tokens.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Iterator

import torch
from torch import nn

from semimer.extract.speech_pooling import PrunedEncoderOutput, pooled_embedding
from semimer.models.tokens import (attention_scores, check_keep_rate, gather_tokens, kept_count, masked_mean,
                                    select_by_scores, select_tokens)

__all__ = [
    "PrunedEncoderOutput",
    "PrunedSpeechEncoder",
    "attention_scores",
    "kept_count",
    "load_speech_encoder",
    "masked_mean",
    "pooled_embedding",
    "select_by_scores",
    "select_tokens",
]

SUPPORTED_MODEL_TYPES = ("hubert", "wav2vec2", "wavlm")



# ----------------------------------------------------------------------------------------------
# The wrapper
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _attn_implementation(config, impl: str | None) -> Iterator[None]:
    """Temporarily set ``config._attn_implementation`` (restored on exit, also on error)."""
    if impl is None or getattr(config, "_attn_implementation", None) == impl:
        yield
        return
    previous = config._attn_implementation
    config._attn_implementation = impl
    try:
        yield
    finally:
        config._attn_implementation = previous


class PrunedSpeechEncoder(nn.Module):
    """Progressive, rate-based token pruning around a ``transformers`` speech encoder.

    Args:
        model: a loaded ``HubertModel``, ``Wav2Vec2Model`` or ``WavLMModel`` (or a task model
            such as ``*ForCTC`` / ``*ForSequenceClassification``: its base model is used). The
            model is wrapped, not copied: parameters are shared.
        keep_rate: ``r`` in ``(0, 1]``: fraction of valid tokens kept at each pruning step.
        prune_from_layer: ``l0`` in ``[0, L]``: first 0-based layer index whose attention is used
            to prune (pruning after layers ``l0 .. L-1``; ``L`` disables pruning). See the module
            docstring for the precise convention.

    Raises:
        ValueError: bad ``keep_rate`` / ``prune_from_layer``, unsupported model type, wav2vec2
            output adapter, or a model whose attention probabilities cannot be obtained.
    """

    def __init__(self, model: nn.Module, keep_rate: float = 0.85, prune_from_layer: int = 4):
        super().__init__()
        check_keep_rate(keep_rate)
        base = getattr(model, "base_model", model)
        config = getattr(base, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model type {model_type!r} ({type(model).__name__}); "
                f"token pruning supports {SUPPORTED_MODEL_TYPES}"
            )
        for attr in ("feature_extractor", "feature_projection", "encoder"):
            if not hasattr(base, attr):
                raise ValueError(f"{type(base).__name__} has no `{attr}`: not a supported speech encoder")
        encoder = base.encoder
        if not all(hasattr(layer, "attention") for layer in encoder.layers):
            raise ValueError(
                f"{type(base).__name__}: encoder layers expose no `attention` module, so attention "
                "weights are not available for token scoring"
            )
        if getattr(base, "adapter", None) is not None:
            raise ValueError(
                "wav2vec2 models with add_adapter=True are unsupported with pruning: the output adapter "
                "is a strided convolution over time, meaningless on a pruned (non-contiguous) token set"
            )
        num_layers = len(encoder.layers)
        if isinstance(prune_from_layer, bool) or not isinstance(prune_from_layer, int):
            raise ValueError(f"prune_from_layer must be an int in [0, {num_layers}], got {prune_from_layer!r}")
        if not 0 <= prune_from_layer <= num_layers:
            raise ValueError(f"prune_from_layer must be in [0, {num_layers}] (num_layers), got {prune_from_layer}")

        self.model = base
        self.config = config
        self.keep_rate = float(keep_rate)
        self.prune_from_layer = int(prune_from_layer)
        self.num_layers = num_layers
        self.is_wavlm = model_type == "wavlm"
        self.stable_layer_norm = type(encoder).__name__.endswith("StableLayerNorm")
        self._mask_accepts_adapter_flag = (
            "add_adapter" in inspect.signature(base._get_feature_vector_attention_mask).parameters
        )

    # -- properties ----------------------------------------------------------------------------
    @property
    def pruning_active(self) -> bool:
        """True when at least one pruning step can drop tokens."""
        return self.keep_rate < 1.0 and self.prune_from_layer < self.num_layers

    def extra_repr(self) -> str:
        return (
            f"model_type={self.config.model_type}, keep_rate={self.keep_rate}, "
            f"prune_from_layer={self.prune_from_layer}, num_layers={self.num_layers}, "
            f"stable_layer_norm={self.stable_layer_norm}"
        )

    # -- helpers -------------------------------------------------------------------------------
    def _plain_attn_implementation(self) -> str | None:
        """Attention for layers that do not score tokens: the model's own if it is eager/sdpa
        (both accept our additive float mask), else sdpa. ``None`` for WavLM, whose attention
        does not dispatch on the config."""
        if self.is_wavlm:
            return None
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        return impl if impl in ("eager", "sdpa") else "sdpa"

    def _frame_mask(self, n_frames: int, attention_mask: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """(B, N) bool valid mask of the conv frames (library rule for sample-level masks)."""
        if attention_mask is None:
            return torch.ones(batch, n_frames, dtype=torch.bool, device=device)
        kwargs = {"add_adapter": False} if self._mask_accepts_adapter_flag else {}
        mask = self.model._get_feature_vector_attention_mask(n_frames, attention_mask, **kwargs)
        return mask.to(device=device, dtype=torch.bool)

    def _layer_mask(self, mask: torch.Tensor, dtype: torch.dtype):
        """Attention mask in the format the layers expect, or None when nothing is padded."""
        if bool(mask.all()):
            return None
        if self.is_wavlm:
            return mask  # WavLM builds key_padding_mask = attention_mask.ne(1) itself
        # additive float mask (B, 1, 1, N): broadcast over heads and queries; accepted by eager and sdpa
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        additive = additive.masked_fill(~mask, torch.finfo(dtype).min)
        return additive[:, None, None, :]

    @staticmethod
    def _gather_position_bias(base_bias: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        """WavLM relative position bias (H, N0, N0) gathered at original frames -> (B*H, N', N')."""
        fi = frame_index.clamp_min(0)
        bias = base_bias[:, fi[:, :, None], fi[:, None, :]]  # (H, B, N', N')
        return bias.permute(1, 0, 2, 3).reshape(-1, fi.shape[1], fi.shape[1])

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = True,
    ) -> PrunedEncoderOutput:
        """Run the encoder with progressive pruning.

        Args:
            input_values: ``(B, S)`` raw waveform (normalised as the model expects).
            attention_mask: ``(B, S)`` sample-level mask (1 = real audio), or ``None``. Use it only
                with models whose feature extractor supports padding (``feat_extract_norm="layer"``);
                a "group"-norm first conv layer normalises over time, padding included.
            output_hidden_states: keep every layer's hidden states (needed by
                :func:`pooled_embedding` with ``"last4"``).
        """
        base, encoder = self.model, self.model.encoder
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples), got shape {tuple(input_values.shape)}")

        # 1) library front end: conv feature extractor -> projection (-> SpecAugment in training)
        extract = base.feature_extractor(input_values).transpose(1, 2)
        batch, n_frames, _ = extract.shape
        mask = self._frame_mask(n_frames, attention_mask, batch, extract.device)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every clip needs at least one valid frame (check attention_mask / clip length)")
        hidden = base.feature_projection(extract)
        if isinstance(hidden, tuple):  # wav2vec2 / WavLM also return the normalised features
            hidden = hidden[0]
        hidden = base._mask_hidden_states(hidden, attention_mask=mask if attention_mask is not None else None)

        # 2) library encoder prologue: zero padded frames, positional conv, [layer norm], dropout
        if attention_mask is not None:
            hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
        hidden = hidden + encoder.pos_conv_embed(hidden).to(hidden.device)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)

        frame_index = torch.arange(n_frames, device=hidden.device).unsqueeze(0).expand(batch, -1)
        frame_index = frame_index.masked_fill(~mask, -1)
        input_counts = mask.sum(dim=1).tolist()

        all_hidden = [hidden] if output_hidden_states else None
        all_masks = [mask] if output_hidden_states else None
        all_index = [frame_index] if output_hidden_states else None
        kept_counts: list[list[int]] = []

        # 3) our loop over the library's layer modules
        prune = self.pruning_active
        captured: dict[str, object] = {}
        hooks = []
        if prune:
            def make_hook():
                def hook(module, args, out):
                    weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
                    if weights is None:
                        captured["scores"] = None
                    else:
                        captured["scores"] = attention_scores(weights, captured["query_mask"])
                return hook

            for i in range(self.prune_from_layer, self.num_layers):
                hooks.append(encoder.layers[i].attention.register_forward_hook(make_hook()))

        plain_impl = self._plain_attn_implementation()
        position_bias = None  # WavLM only
        base_bias = None  # WavLM: full-length (H, N0, N0) bias, for gathering after pruning
        layer_mask = self._layer_mask(mask, hidden.dtype)
        try:
            for i, layer in enumerate(encoder.layers):
                scoring = prune and i >= self.prune_from_layer
                skip = False
                if base.training and self.config.layerdrop > 0.0 and (i > 0 or not self.is_wavlm):
                    skip = bool(torch.rand([]) < self.config.layerdrop)
                if not skip:
                    captured["scores"] = None
                    captured["query_mask"] = mask
                    impl = "eager" if scoring else plain_impl
                    with _attn_implementation(self.config, impl):
                        if self.is_wavlm:
                            kwargs = {} if self.stable_layer_norm else {"index": i}
                            hidden, position_bias = layer(
                                hidden, attention_mask=layer_mask, position_bias=position_bias, **kwargs
                            )
                        else:
                            out = layer(hidden, attention_mask=layer_mask)
                            hidden = out[0] if isinstance(out, tuple) else out
                    if self.is_wavlm and base_bias is None and position_bias is not None and prune:
                        heads = position_bias.shape[0] // batch
                        base_bias = position_bias[:heads]  # identical for every clip
                    if scoring:
                        scores = captured["scores"]
                        if scores is None:
                            raise ValueError(
                                f"layer {i} of {type(base).__name__} returned no attention weights "
                                f"(attn_implementation={self.config._attn_implementation!r}); token "
                                "pruning needs attention probabilities (eager attention)"
                            )
                        indices, mask = select_by_scores(scores, mask, self.keep_rate)
                        hidden = gather_tokens(hidden, indices)
                        frame_index = gather_tokens(frame_index, indices).masked_fill(~mask, -1)
                        layer_mask = self._layer_mask(mask, hidden.dtype)
                        if self.is_wavlm:
                            position_bias = self._gather_position_bias(base_bias, frame_index)
                kept_counts.append(mask.sum(dim=1).tolist())
                if output_hidden_states:
                    all_hidden.append(hidden)
                    all_masks.append(mask)
                    all_index.append(frame_index)
        finally:
            for h in hooks:
                h.remove()
            captured.clear()

        last = encoder.layer_norm(hidden) if self.stable_layer_norm else hidden
        return PrunedEncoderOutput(
            last_hidden_state=last,
            mask=mask,
            frame_index=frame_index,
            kept_counts=kept_counts,
            input_counts=input_counts,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            hidden_masks=tuple(all_masks) if output_hidden_states else None,
            hidden_frame_index=tuple(all_index) if output_hidden_states else None,
        )


# ----------------------------------------------------------------------------------------------
# Loading from a local directory
# ----------------------------------------------------------------------------------------------
def load_speech_encoder(
    model_dir: str | os.PathLike,
    keep_rate: float = 1.0,
    prune_from_layer: int | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> PrunedSpeechEncoder:
    """Load a HuBERT / wav2vec 2.0 / WavLM checkpoint from a **local** directory and wrap it.

    Never contacts a model hub (``local_files_only=True``; a path that is not an existing directory
    raises ``FileNotFoundError`` before ``transformers`` is called). Task checkpoints (``*ForCTC``,
    ...) load into the base model (the head is dropped). The model is put in eval mode.

    Args:
        model_dir: directory with ``config.json`` and weights (``save_pretrained`` layout).
        keep_rate: pruning keep rate ``r`` in ``(0, 1]`` (1 = no pruning).
        prune_from_layer: ``l0``; ``None`` means ``min(4, num_layers)``.
        device: where to put the model.
        attn_implementation: attention used by the non-scoring layers (``"sdpa"`` or ``"eager"``).
    """
    path = os.fspath(model_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model_dir {path!r} is not a local directory (hub names are not supported)")
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model type {config.model_type!r} in {path}; expected {SUPPORTED_MODEL_TYPES}")
    model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=attn_implementation)
    model.to(device).eval()
    if prune_from_layer is None:
        prune_from_layer = min(4, config.num_hidden_layers)
    return PrunedSpeechEncoder(model, keep_rate=keep_rate, prune_from_layer=prune_from_layer).eval()
