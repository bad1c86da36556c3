"""Tests for progressive token pruning of speech encoders (``semimer.extract.pruned_speech``).

All models are tiny and randomly initialised from a config (hidden 32, 2 heads, 2-4 layers,
3-layer conv stack with a 20x downsampling); nothing touches a model hub.

Note on padding: HuBERT/wav2vec2-base configs use ``feat_extract_norm="group"``, whose first conv
layer normalises over time *including padding*, so a padded clip never equals the clip alone
(a library property, not a pruning one). The mixed-length tests therefore use
``feat_extract_norm="layer"`` (+ ``do_stable_layer_norm=True`` for the pre-LN path), the
configuration for which the library documents ``attention_mask`` support.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

transformers = pytest.importorskip("transformers")

# WavLM (library code) passes a bool key_padding_mask with a float position bias; torch warns about it
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")

from semimer.extract.pruned_speech import (  # noqa: E402
    PrunedSpeechEncoder,
    attention_scores,
    kept_count,
    load_speech_encoder,
    masked_mean,
    pooled_embedding,
    select_by_scores,
    select_tokens,
)

TINY = dict(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def make_model(kind: str = "hubert", layers: int = 3, padding_ok: bool = False, stable: bool = False, **extra):
    torch.manual_seed(0)
    kw = dict(TINY, num_hidden_layers=layers, **extra)
    if padding_ok:
        kw.update(feat_extract_norm="layer", do_stable_layer_norm=True)
    elif stable:
        kw.update(do_stable_layer_norm=True)
    if kind == "hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**kw))
    elif kind == "wav2vec2":
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**kw))
    elif kind == "wavlm":
        kw.update(num_buckets=32, max_bucket_distance=64)
        model = transformers.WavLMModel(transformers.WavLMConfig(**kw))
    else:
        raise AssertionError(kind)
    return model.eval()


def padded_batch(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    clips = [torch.randn(n, generator=g) for n in lengths]
    x = torch.zeros(len(clips), max(lengths))
    am = torch.zeros(len(clips), max(lengths), dtype=torch.long)
    for i, c in enumerate(clips):
        x[i, : len(c)] = c
        am[i, : len(c)] = 1
    return clips, x, am


def exact_ceil(rate: float, n: int) -> int:
    return max(1, math.ceil(Fraction(str(rate)) * n))


# ---------------------------------------------------------------------------------------------
# equality with the library when nothing is pruned
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hubert", "wav2vec2"])
@pytest.mark.parametrize("stable", [False, True])
def test_keep_rate_one_equals_library(kind, stable):
    model = make_model(kind, layers=3, stable=stable)
    x = torch.randn(2, 4000)
    with torch.inference_mode():
        ref = model(x, output_hidden_states=True)
        out = PrunedSpeechEncoder(model, keep_rate=1.0, prune_from_layer=0)(x)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert len(out.hidden_states) == len(ref.hidden_states) == 4
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert out.mask.all()
    assert out.kept_counts == [[out.input_counts[0]] * 2] * 3


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "wavlm"])
def test_prune_from_num_layers_equals_library_with_padding(kind):
    model = make_model(kind, layers=2, padding_ok=True)
    _, x, am = padded_batch([4000, 2600])
    with torch.inference_mode():
        ref = model(x, attention_mask=am, output_hidden_states=True)
        out = PrunedSpeechEncoder(model, keep_rate=0.5, prune_from_layer=2)(x, attention_mask=am)
    m = out.mask
    assert m.sum(1).tolist() == out.input_counts and out.input_counts[1] < out.input_counts[0]
    torch.testing.assert_close(out.last_hidden_state[m], ref.last_hidden_state[m], atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine[m], theirs[m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_pruning_only_the_last_layer_gathers_exact_rows(kind):
    """l0 = L-1: every layer runs on all tokens, so kept rows must equal the library's rows."""
    model = make_model(kind, layers=2, padding_ok=True)
    _, x, am = padded_batch([4000, 2600])
    with torch.inference_mode():
        ref = model(x, attention_mask=am, output_hidden_states=True)
        out = PrunedSpeechEncoder(model, keep_rate=0.6, prune_from_layer=1)(x, attention_mask=am)
    for b in range(2):
        n = out.mask[b].sum()
        idx = out.frame_index[b, :n]
        torch.testing.assert_close(out.last_hidden_state[b, :n], ref.last_hidden_state[b, idx], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.hidden_states[1][b], ref.hidden_states[1][b, : out.hidden_states[1].shape[1]])


# ---------------------------------------------------------------------------------------------
# counts and time order
# ---------------------------------------------------------------------------------------------
def test_kept_count_helper():
    assert kept_count(10, 0.7) == 7  # 0.7 * 10 = 7.000000000000001 in floating point
    assert kept_count(20, 0.85) == 17
    assert kept_count(21, 0.85) == 18
    assert kept_count(1, 0.1) == 1
    assert kept_count(0, 0.5) == 0
    assert kept_count(7, 1.0) == 7


@pytest.mark.parametrize("rate", [0.7, 0.85])
def test_kept_counts_follow_rate_per_clip_and_layer(rate):
    model = make_model("hubert", layers=4, padding_ok=True)
    _, x, am = padded_batch([4000, 2600, 1100])
    with torch.inference_mode():
        out = PrunedSpeechEncoder(model, keep_rate=rate, prune_from_layer=1)(x, attention_mask=am)
    expected, counts = [], list(out.input_counts)
    assert counts == [199, 129, 54]  # conv output lengths of 4000 / 2600 / 1100 samples
    for layer in range(4):
        if layer >= 1:
            counts = [exact_ceil(rate, c) for c in counts]
        expected.append(list(counts))
    assert out.kept_counts == expected
    # re-packed width is the largest count: compute really shrinks
    assert out.last_hidden_state.shape[1] == max(expected[-1])
    assert out.mask.sum(1).tolist() == expected[-1]
    for hs, hm, k in zip(out.hidden_states[1:], out.hidden_masks[1:], expected):
        assert hs.shape[1] == max(k) and hm.sum(1).tolist() == k


def test_frame_index_strictly_increasing_and_padding_minus_one():
    model = make_model("hubert", layers=3, padding_ok=True)
    _, x, am = padded_batch([4000, 2600, 1100])
    with torch.inference_mode():
        out = PrunedSpeechEncoder(model, keep_rate=0.6, prune_from_layer=0)(x, attention_mask=am)
    for fi, m, hm in zip(out.hidden_frame_index, out.hidden_masks, out.hidden_masks):
        assert ((fi >= 0) == m).all()
    for b, n_in in enumerate(out.input_counts):
        n = int(out.mask[b].sum())
        fi = out.frame_index[b]
        assert (fi[:n].diff() > 0).all()
        assert fi[:n].max() < n_in
        assert (fi[n:] == -1).all()
        assert out.mask[b, :n].all() and not out.mask[b, n:].any()


# ---------------------------------------------------------------------------------------------
# select_tokens on hand-built attention
# ---------------------------------------------------------------------------------------------
def test_select_tokens_hand_built_attention():
    # column sums over heads and queries: token j receives col[j]
    col = torch.tensor([0.5, 3.0, 0.1, 2.0, 1.0, 0.2])
    attn = torch.zeros(1, 2, 6, 6)
    attn[0, 0, 0] = col  # one query row of head 0 carries everything
    idx, mask = select_tokens(attn, None, keep_rate=0.5)  # ceil(0.5 * 6) = 3 -> tokens 1, 3, 4
    assert idx.tolist() == [[1, 3, 4]] and mask.tolist() == [[True] * 3]
    idx, _ = select_tokens(attn, None, keep_rate=0.34)  # ceil(2.04) = 3 as well
    assert idx.tolist() == [[1, 3, 4]]
    idx, _ = select_tokens(attn, None, keep_rate=0.01)  # at least one token
    assert idx.tolist() == [[1]]


def test_select_tokens_respects_padding_and_sums_heads():
    n = 5
    attn = torch.zeros(2, 2, n, n)
    # clip 0 (all valid): head 0 favours token 4, head 1 favours token 0 more strongly
    attn[0, 0, :, 4] = 0.3
    attn[0, 1, :, 0] = 0.5
    attn[0, 0, :, 2] = 0.2
    # clip 1: only 3 valid tokens; padded query rows (3, 4) and padded key columns (3, 4)
    # carry huge values that must be ignored
    attn[1, :, :3, 1] = 0.4
    attn[1, :, :3, 2] = 0.1
    attn[1, :, 3:, 0] = 100.0
    attn[1, :, :, 3:] = 50.0
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    scores = attention_scores(attn, mask)
    assert torch.isinf(scores[1, 3:]).all() and scores[1, 0] == 0
    idx, new_mask = select_tokens(attn, mask, keep_rate=0.4)  # ceil(2) = 2 and ceil(1.2) = 2
    assert new_mask.tolist() == [[True, True], [True, True]]
    assert idx[0].tolist() == [0, 4]  # 2.5 and 1.5 beat 1.0: time order restored
    assert idx[1].tolist() == [1, 2]


def test_select_by_scores_ties_prefer_earlier_and_ragged_counts():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    idx, new_mask = select_by_scores(scores, mask, keep_rate=0.5)
    assert idx[0].tolist() == [0, 1]  # ties: earliest frames
    assert new_mask.tolist() == [[True, True], [True, True]]
    assert idx[1].tolist() == [1, 2]  # token 3 is padding, never kept despite its score
    idx, new_mask = select_by_scores(scores, mask, keep_rate=0.75)  # 3 and ceil(2.25) = 3
    assert new_mask.sum(1).tolist() == [3, 3]
    idx, new_mask = select_by_scores(scores[:, :3], torch.tensor([[1, 1, 1], [1, 0, 0]]).bool(), 0.7)
    assert new_mask.tolist() == [[True, True, True], [True, False, False]] and idx[1, 0] == 0


# ---------------------------------------------------------------------------------------------
# batching: mixed lengths give the same per-clip result as one clip at a time
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_mixed_length_batch_equals_single_clips(kind):
    model = make_model(kind, layers=4, padding_ok=True)
    lengths = [4000, 2600, 1100]
    clips, x, am = padded_batch(lengths)
    enc = PrunedSpeechEncoder(model, keep_rate=0.7, prune_from_layer=1)
    with torch.inference_mode():
        batch = enc(x, attention_mask=am)
        pooled_batch = pooled_embedding(batch)
        for b, clip in enumerate(clips):
            alone = enc(clip.unsqueeze(0))
            n = int(batch.mask[b].sum())
            assert n == alone.last_hidden_state.shape[1]
            assert [c[b] for c in batch.kept_counts] == [c[0] for c in alone.kept_counts]
            assert batch.frame_index[b, :n].tolist() == alone.frame_index[0].tolist()
            torch.testing.assert_close(batch.last_hidden_state[b, :n], alone.last_hidden_state[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(pooled_batch[b], pooled_embedding(alone)[0], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
def test_pooled_embedding_matches_library_convention_without_pruning():
    model = make_model("hubert", layers=4, padding_ok=True)
    _, x, am = padded_batch([4000, 2600])
    with torch.inference_mode():
        ref = model(x, attention_mask=am, output_hidden_states=True)
        out = PrunedSpeechEncoder(model, keep_rate=1.0, prune_from_layer=0)(x, attention_mask=am)
        expected = masked_mean(torch.stack(ref.hidden_states[-4:]).sum(0), out.mask)
        torch.testing.assert_close(pooled_embedding(out), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled_embedding(out, "last"), masked_mean(ref.last_hidden_state, out.mask))
        pruned = PrunedSpeechEncoder(model, keep_rate=0.5, prune_from_layer=0)(x, attention_mask=am)
        emb = pooled_embedding(pruned)
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    manual = sum(masked_mean(pruned.hidden_states[k], pruned.hidden_masks[k]) for k in range(-4, 0))
    torch.testing.assert_close(emb, manual)
    with pytest.raises(ValueError):
        pooled_embedding(out, "first")
    with pytest.raises(ValueError):
        pooled_embedding(out, [10])


# ---------------------------------------------------------------------------------------------
# errors, attention implementation, training mode
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_keep_rate(rate):
    with pytest.raises(ValueError, match="keep_rate"):
        PrunedSpeechEncoder(make_model(layers=2), keep_rate=rate, prune_from_layer=0)


@pytest.mark.parametrize("l0", [-1, 3, 1.5])
def test_bad_prune_from_layer(l0):
    with pytest.raises(ValueError, match="prune_from_layer"):
        PrunedSpeechEncoder(make_model(layers=2), keep_rate=0.5, prune_from_layer=l0)


def test_unsupported_models():
    with pytest.raises(ValueError, match="unsupported model type"):
        PrunedSpeechEncoder(torch.nn.Linear(2, 2))
    bert = transformers.BertModel(
        transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(ValueError, match="unsupported model type"):
        PrunedSpeechEncoder(bert, prune_from_layer=0)
    adapter = make_model("wav2vec2", layers=2, add_adapter=True, output_hidden_size=32)
    with pytest.raises(ValueError, match="add_adapter"):
        PrunedSpeechEncoder(adapter, prune_from_layer=0)


def test_missing_attention_weights_raise():
    model = make_model("hubert", layers=2)
    attention = model.encoder.layers[1].attention
    original = attention.forward
    attention.forward = lambda *a, **k: (original(*a, **k)[0], None)  # e.g. a fused kernel
    enc = PrunedSpeechEncoder(model, keep_rate=0.5, prune_from_layer=1)
    with torch.inference_mode(), pytest.raises(ValueError, match="attention weights"):
        enc(torch.randn(1, 4000))
    assert model.config._attn_implementation == "sdpa"  # restored after the error


def test_sdpa_model_stays_sdpa_and_task_models_are_accepted():
    ctc = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**TINY, num_hidden_layers=2, vocab_size=8)).eval()
    assert ctc.config._attn_implementation == "sdpa"
    enc = PrunedSpeechEncoder(ctc, keep_rate=0.5, prune_from_layer=0)
    assert enc.model is ctc.wav2vec2
    with torch.inference_mode():
        out = enc(torch.randn(2, 4000))
    assert ctc.config._attn_implementation == "sdpa"
    assert out.kept_counts == [[100, 100], [50, 50]]


def test_training_mode_backpropagates_through_kept_tokens():
    model = make_model("hubert", layers=2, padding_ok=True)
    enc = PrunedSpeechEncoder(model, keep_rate=0.5, prune_from_layer=0).train()
    out = enc(torch.randn(2, 4000))
    pooled_embedding(out, "last").sum().backward()
    grad = model.encoder.layers[1].feed_forward.output_dense.weight.grad
    assert grad is not None and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# loading from a local directory
# ---------------------------------------------------------------------------------------------
def test_load_speech_encoder_from_local_dir(tmp_path):
    model = make_model("wav2vec2", layers=3, padding_ok=True)
    model.save_pretrained(tmp_path / "w2v")
    loaded = load_speech_encoder(tmp_path / "w2v", keep_rate=0.8, prune_from_layer=1)
    assert not loaded.training and loaded.keep_rate == 0.8 and loaded.prune_from_layer == 1
    default = load_speech_encoder(tmp_path / "w2v")
    assert default.keep_rate == 1.0 and default.prune_from_layer == 3  # min(4, num_layers)
    _, x, am = padded_batch([4000, 2600])
    with torch.inference_mode():
        a = loaded(x, attention_mask=am)
        b = PrunedSpeechEncoder(model, keep_rate=0.8, prune_from_layer=1)(x, attention_mask=am)
    assert a.kept_counts == b.kept_counts
    torch.testing.assert_close(a.last_hidden_state[a.mask], b.last_hidden_state[b.mask])


def test_load_speech_encoder_refuses_non_directories(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_speech_encoder("facebook/hubert-base-ls960")
    with pytest.raises(FileNotFoundError):
        load_speech_encoder(tmp_path / "missing")


def test_eager_and_sdpa_models_prune_identically():
    model = make_model("hubert", layers=3, padding_ok=True)
    _, x, am = padded_batch([4000, 2600])
    enc = PrunedSpeechEncoder(model, keep_rate=0.6, prune_from_layer=1)
    with torch.inference_mode():
        sdpa = enc(x, attention_mask=am)
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        eager = enc(x, attention_mask=am)
    assert model.config._attn_implementation == "eager"
    assert sdpa.kept_counts == eager.kept_counts
    assert torch.equal(sdpa.frame_index, eager.frame_index)
    torch.testing.assert_close(sdpa.last_hidden_state[sdpa.mask], eager.last_hidden_state[eager.mask])
