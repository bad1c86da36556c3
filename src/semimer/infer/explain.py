"""One clip, explained (what ``semimer serve`` shows): per-modality extraction and timing, what each
ensemble member, attention fusion weight and MR-CCL head said, and the modalities the clip lacks.

:func:`explain_clip` computes the probabilities as :func:`semimer.infer.predict.predict_clips` does
(re-extraction with the run's extractor metadata, then :func:`~semimer.infer.predict.predict_features`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from semimer.infer.inputs import check_modality, check_reextractable, missing_row
from semimer.infer.predict import Ensemble, predict_features


class UnpredictableClip(ValueError):
    """A clip the run cannot predict: ``missing`` maps each of the run's modalities that could not
    be extracted from it to the reason (``no video stream``, ``corrupt file: ...``)."""

    def __init__(self, message: str, missing: Mapping[str, str]):
        super().__init__(message)
        self.missing = dict(missing)


@dataclass
class ClipExplanation:
    """What :func:`explain_clip` found for one clip; :meth:`as_dict` is its JSON form."""

    name: str
    classes: list[str]
    probs: np.ndarray  # (K,) the ensemble's probabilities, computed as predict_clips computes them
    modalities: dict[str, dict[str, Any]]  # per modality: feature, extractor, seconds, weight, probs
    fusion_head: dict[str, Any] | None  # MR-CCL's fusion head: {"probs", "vote_weight"}; None without one
    members: list[dict[str, Any]]  # per ensemble member: dir, model, weight, folds, probs
    transcript: str | None  # given to the text extractor (None: no text feature, or none given: ASR)
    seconds: dict[str, float] = field(default_factory=dict)  # extract_<modality>, predict
    missing: dict[str, str] = field(default_factory=dict)  # modality -> why the clip lacks it (predicted without)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "discrete": self.classes[int(np.argmax(self.probs))],
                "probs": _by_class(self.classes, self.probs), "modalities": self.modalities,
                "missing": dict(self.missing), "used": [m for m in self.modalities if m not in self.missing],
                "fusion_head": self.fusion_head, "members": self.members, "transcript": self.transcript,
                "seconds": dict(self.seconds)}


def _by_class(classes: Sequence[str], p: Any) -> dict[str, float]:
    return {c: float(v) for c, v in zip(classes, np.asarray(p, dtype=np.float64))}


def explain_clip(ensemble: Ensemble, path: str | os.PathLike, transcript: str | None = None,
                 name: str | None = None) -> ClipExplanation:
    """Predict one media file like :func:`predict_clips` and say how the prediction was made.

    Each modality's feature is re-extracted on its own (timed as ``seconds["extract_<m>"]``) with
    the extractor metadata of the run, then :func:`predict_features` gives the probabilities
    (``seconds["predict"]`` includes the per-member pass below). Per ensemble member, its fold
    models' outputs are averaged: class probabilities, the attention model's fusion weight per
    modality, MR-CCL's per-head probabilities and vote weights. Per modality, those of the members
    that have them are combined with the ensemble weights (renormalised over those members).

    A modality the clip lacks (no stream, no face, no transcript) is left out, as in
    :func:`predict_clips` (``missing``: modality -> reason). Raises :class:`UnpredictableClip` when
    the clip has none of the run's modalities (the reasons in ``missing``); a damaged file raises
    ValueError naming it; set-up problems (features not made by ``semimer extract``, a checkpoint that is
    gone) raise ValueError / FileNotFoundError as in :func:`predict_clips`.
    """
    import time

    from semimer.extract import extract_clip_features_partial

    path = Path(path)
    name = name or path.stem
    check_reextractable(ensemble.run_dir, ensemble.features)
    seconds: dict[str, float] = {}
    feats: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    for m, f in ensemble.features.items():
        t0 = time.perf_counter()
        try:
            got, lacks = extract_clip_features_partial(path, [f["extractor"]], transcript=transcript,
                                                       device=ensemble.device, base_dir=ensemble.run_dir)
        except ImportError as exc:  # an optional package the run's extractor needs
            raise ValueError(str(exc)) from None
        except ValueError as exc:  # a damaged stream is this clip's problem, for this modality
            head = f"{path}: cannot extract feature {f['feature']}: "
            if not str(exc).startswith(f"{path}: "):
                raise
            got, lacks = {}, {f["feature"]: str(exc)[len(head):] if str(exc).startswith(head) else str(exc)[len(f"{path}: "):]}
        if lacks:
            missing[m] = next(iter(lacks.values()))
            feats[m] = missing_row(f)
        else:
            feats[m] = next(iter(got.values()))
        seconds[f"extract_{m}"] = round(time.perf_counter() - t0, 4)
    if len(missing) == len(ensemble.features):
        uses = ", ".join(f"{m} ({f['feature']})" for m, f in ensemble.features.items())
        raise UnpredictableClip(f"cannot predict {name}: " + "; ".join(f"{m}: {r}" for m, r in missing.items())
                                + f". The run needs at least one of {uses}", missing)
    t0 = time.perf_counter()
    probs = predict_features(ensemble, feats)[0]
    members = _member_outputs(ensemble, feats)
    seconds["predict"] = round(time.perf_counter() - t0, 4)
    modalities = {m: {"feature": f["feature"], "extractor": (f.get("extractor") or {}).get("extractor"),
                      "status": "missing" if m in missing else "present", "reason": missing.get(m),
                      "seconds": seconds[f"extract_{m}"],
                      "weight": _combine(members, "fusion_weights", m),
                      "probs": _combine(members, "heads", m, ensemble.classes),
                      "vote_weight": _combine(members, "vote_weights", m)}
                  for m, f in ensemble.features.items()}
    fusion = _combine(members, "heads", "fusion", ensemble.classes)
    fusion_head = None if fusion is None else {"probs": fusion,
                                               "vote_weight": _combine(members, "vote_weights", "fusion")}
    text = transcript if any((f.get("extractor") or {}).get("modality") == "text"
                             for f in ensemble.features.values()) else None
    return ClipExplanation(name=name, classes=list(ensemble.classes), probs=probs, modalities=modalities,
                           fusion_head=fusion_head, members=members, transcript=text, seconds=seconds,
                           missing=missing)


def _member_outputs(ensemble: Ensemble, feats: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per member: its fold models' outputs on one clip, averaged over the folds (JSON-ready)."""
    import torch

    from semimer.data.ragged import collate, to_tensors

    arrays = {m: check_modality(m, f, feats[m]) for m, f in ensemble.features.items()}
    batch = collate(to_tensors(arrays, ensemble.device, ensemble.dims))
    classes = ensemble.classes
    dirs = ensemble.member_dirs or [ensemble.run_dir] * len(ensemble.members)
    out = []
    for (models, w), mdir in zip(ensemble.members, dirs):
        with torch.no_grad():
            res = [model(batch) for model in models]
        rec: dict[str, Any] = {
            "dir": Path(os.path.relpath(mdir, ensemble.run_dir)).as_posix(),
            "model": getattr(models[0], "registry_name", type(models[0]).__name__),
            "weight": float(w), "folds": len(models),
            "probs": _by_class(classes, np.mean([r["probs"][0].float().cpu().numpy() for r in res], axis=0))}
        if "attention" in res[0]:  # attention fusion: one weight per modality
            alpha = np.mean([r["attention"][0].float().cpu().numpy() for r in res], axis=0)
            rec["fusion_weights"] = {m: float(a) for m, a in zip(models[0].modalities, alpha)}
        if "head_logits" in res[0]:  # MR-CCL: unimodal heads + fusion head, voted
            on = dict(zip(models[0].head_names, res[0]["heads_present"][:, 0].tolist())) if "heads_present" in res[0] else {}
            heads = {k: np.mean([torch.softmax(r["head_logits"][k][0].float(), -1).cpu().numpy() for r in res], axis=0)
                     for k in res[0]["head_logits"] if on.get(k, True)}  # a head of a missing modality did not vote
            rec["heads"] = {k: _by_class(classes, p) for k, p in heads.items()}
            vw = {k: float(v) for k, v in zip(models[0].head_names, models[0].vote_weights.float().cpu().numpy())
                  if k in heads}  # renormalised over the heads that voted for this clip
            total = sum(vw.values())  # 0: the model falls back to the fusion head alone
            rec["vote_weights"] = {k: v / total for k, v in vw.items()} if total > 0 else {"fusion": 1.0}
        out.append(rec)
    return out


def _combine(members: list[dict[str, Any]], key: str, item: str, classes: Sequence[str] | None = None):
    """``members[i][key][item]`` averaged with the member weights over the members that have it
    (renormalised); a float, or a class -> probability dict when ``classes`` is given; None if none has it."""
    have = [(r["weight"], r[key][item]) for r in members if item in (r.get(key) or {})]
    total = sum(w for w, _ in have)
    if not have or total <= 0:
        return None
    if classes is None:
        return float(sum(w * v for w, v in have) / total)
    return {c: float(sum(w * v[c] for w, v in have) / total) for c in classes}
