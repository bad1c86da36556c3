"""Predict emotions for new clips with a trained run folder.

A run folder (``semimer train`` or ``semimer recipe``) holds everything prediction needs::

    RUN/features.json   per modality: feature name, dim, level and the extractor metadata
                        (``extractor.json`` of ``semimer extract``) that made it
    RUN/ensemble.json   {"members": [{"dir": ".", "weight": 1.0}, ...], "classes": [...]}
    RUN/<member dir>/fold_<k>/model.safetensors + model.json

:func:`load_ensemble` loads every fold model of every member; :func:`predict_features` is the
weighted soft vote over members of each member's fold average (weights normalised to sum 1);
:func:`predict_clips` re-extracts exactly the run's features from video files (or reads them from
a data root's stores with ``features_dir``) and predicts, keeping per-clip failures apart.

Library use::

    from semimer.infer.predict import load_ensemble, predict_clips
    names, probs, failures = predict_clips("runs/attention", ["new.mp4"], transcripts={"new": "..."})
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from semimer.infer.inputs import clip_entries, check_inputs, check_modality, missing_row, needs_transcript
from semimer.io import read_json
from semimer.utils import log

RUN_HINT = "pass the --out folder of `semimer train` or `semimer recipe`"


@dataclass
class Ensemble:
    """The models of a run: ``members`` is a list of ``(fold models, weight)``, weights summing to 1."""

    run_dir: Path
    members: list[tuple[list[Any], float]]
    classes: list[str]
    features: dict[str, dict[str, Any]]  # features.json: modality -> {feature, dim, level, extractor}
    device: Any = "cpu"
    member_dirs: list[Path] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(f["dim"]) for m, f in self.features.items()}

    def __len__(self) -> int:
        return sum(len(models) for models, _ in self.members)


# --------------------------------------------------------------------------------------------
# loading a run


def read_run_features(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``RUN/features.json`` with clear errors for a missing run or file."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; {RUN_HINT}")
    path = run / "features.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run} is not a finished training run (features.json is written by "
            f"`semimer train` / `semimer recipe`); {RUN_HINT}, or re-train to get one")
    feats = read_json(path)
    if not isinstance(feats, dict) or not feats:
        raise ValueError(f"{path} lists no features; re-train the run")
    for m, f in feats.items():
        if not isinstance(f, dict) or "feature" not in f or "dim" not in f:
            raise ValueError(f"{path}: entry {m!r} needs 'feature' and 'dim'; re-train the run")
    return feats


def _ensemble_spec(run: Path) -> tuple[list[dict[str, Any]], list[str] | None]:
    path = run / "ensemble.json"
    if path.is_file():
        spec = read_json(path)
        members = spec.get("members") or []
        if not members:
            raise ValueError(f"{path} lists no members; re-train the run")
        return members, spec.get("classes")
    if (run / "fold_0" / "model.json").is_file():  # runs written before ensemble.json existed
        return [{"dir": ".", "weight": 1.0}], None
    raise FileNotFoundError(f"{path} not found and {run} has no fold_0/model.json: not a training run; {RUN_HINT}")


def _fold_dirs(member: Path) -> list[Path]:
    folds = []
    k = 0
    while (member / f"fold_{k}" / "model.json").is_file():
        folds.append(member / f"fold_{k}")
        k += 1
    return folds


def load_ensemble(run_dir: str | os.PathLike, device: Any = "cpu") -> Ensemble:
    """Every fold model of every member of ``RUN/ensemble.json``, in eval mode on ``device``."""
    from semimer.models.checkpoint import load_model
    from semimer.utils import pick_device

    run = Path(run_dir)
    features = read_run_features(run)
    member_specs, classes = _ensemble_spec(run)
    try:
        dev = pick_device(str(device)) if not hasattr(device, "type") else device
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    weights = []
    for spec in member_specs:
        try:
            w = float(spec.get("weight", 1.0))
        except (TypeError, ValueError):
            w = -1.0
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"{run / 'ensemble.json'}: member {spec.get('dir')!r} has weight {spec.get('weight')!r}; "
                             f"weights must be numbers >= 0")
        weights.append(w)
    if sum(weights) <= 0:
        raise ValueError(f"{run / 'ensemble.json'}: member weights sum to 0; give at least one a positive weight")
    dims = {m: int(f["dim"]) for m, f in features.items()}
    members: list[tuple[list[Any], float]] = []
    member_dirs: list[Path] = []
    for spec, w in zip(member_specs, weights):
        mdir = run / str(spec.get("dir", "."))
        folds = _fold_dirs(mdir)
        if not folds:
            raise FileNotFoundError(f"ensemble member {mdir} has no fold_0/model.json (+ model.safetensors); "
                                    f"the run is incomplete: re-run training with the same --out to finish it")
        if w == 0:
            continue
        models = []
        for fdir in folds:
            model, meta = load_model(fdir, dev)
            if classes is None:
                classes = list(meta["classes"])
            if list(meta["classes"]) != list(classes):
                raise ValueError(f"{fdir}/model.json has classes {meta['classes']} but the run predicts {classes}; "
                                 f"the run folder mixes models of different trainings")
            mdims = {m: int(d) for m, d in meta["dims"].items()}
            if mdims != dims:
                raise ValueError(f"{fdir}/model.json expects inputs {mdims} but {run / 'features.json'} "
                                 f"describes {dims}; the run folder mixes models of different trainings")
            models.append(model)
        members.append((models, w))
        member_dirs.append(mdir)
    total = sum(w for _, w in members)
    members = [(models, w / total) for models, w in members]
    log.info("run %s: %d member(s), %d fold model(s), classes %s", run, len(members),
             sum(len(m) for m, _ in members), ", ".join(classes or []))
    return Ensemble(run_dir=run, members=members, classes=list(classes or []), features=features,
                    device=dev, member_dirs=member_dirs)


# --------------------------------------------------------------------------------------------
# probabilities from features


def predict_features(ensemble: Ensemble, feats: Mapping[str, Any], batch_size: int = 1024) -> np.ndarray:
    """``(N, K)`` probabilities: Σ_members w · mean over the member's folds of the fold model's
    probabilities. ``feats`` maps each of the run's modalities to raw features (the models
    standardise their inputs themselves): utterance level an ``(N, D)`` array (or one ``(D,)``
    clip); frame level a list of ``N`` ``(T_i, D)`` arrays (or one ``(T, D)`` clip).

    A clip may lack modalities (an all-NaN row, a ``(0, D)`` clip: :func:`missing_row`): it is
    predicted from the ones it has, exactly as in training (fusion and votes over the modalities
    present); a clip with none is an error."""
    from semimer.data.ragged import to_tensors
    from semimer.train.fit import predict_tensors

    missing = [m for m in ensemble.modalities if m not in feats]
    if missing:
        uses = ", ".join(f"{m}={f['feature']}" for m, f in ensemble.features.items())
        raise ValueError(f"features for modality(ies) {missing} are missing; the run uses {uses}")
    arrays: dict[str, Any] = {}
    n = None
    for m, f in ensemble.features.items():
        arrays[m] = check_modality(m, f, feats[m])
        if n is not None and len(arrays[m]) != n:
            raise ValueError(f"modalities have different clip counts ({n} and {len(arrays[m])} for {m})")
        n = len(arrays[m])
    K = len(ensemble.classes)
    out = np.zeros((n or 0, K), dtype=np.float64)
    if not n:
        return out.astype(np.float32)
    has = present(ensemble, arrays)
    if not has.any(axis=1).all():
        i = int(np.flatnonzero(~has.any(axis=1))[0])
        raise ValueError(f"clip {i} has none of the run's modalities ({', '.join(ensemble.modalities)}): "
                         f"nothing to predict from")
    tensors = to_tensors(arrays, ensemble.device, ensemble.dims)
    for models, w in ensemble.members:
        fold_mean = np.mean([predict_tensors(model, tensors, batch_size) for model in models], axis=0)
        out += w * fold_mean
    return out.astype(np.float32)


def present(ensemble: Ensemble, arrays: Mapping[str, Any]) -> np.ndarray:
    """``(N, M)`` bool: which clip has which of the run's modalities (checked arrays)."""
    cols = []
    for m, f in ensemble.features.items():
        x = arrays[m]
        cols.append(np.array([len(c) > 0 for c in x]) if f.get("level", "utt") == "frame"
                    else ~np.isnan(x).all(axis=1))
    return np.stack(cols, axis=1)


def _stack(ensemble: Ensemble, rows: Mapping[str, list[np.ndarray]]) -> dict[str, Any]:
    """Per-clip arrays of each modality as predict_features takes them."""
    out = {}
    for m, r in rows.items():
        f = ensemble.features[m]
        if f.get("level", "utt") == "frame":
            out[m] = list(r)
        else:
            out[m] = np.stack(r) if r else np.zeros((0, int(f["dim"])), np.float32)
    return out


# --------------------------------------------------------------------------------------------
# clips -> features -> probabilities


def predict_clips(run_dir: str | os.PathLike, paths: Sequence[Any], transcripts: Mapping[str, str] | None = None,
                  device: Any = "auto", *, features_dir: str | os.PathLike | None = None,
                  ensemble: Ensemble | None = None, progress: bool = False,
                  on_clip: Callable[[str, str | None], None] | None = None,
                  missing: dict[str, dict[str, str]] | None = None
                  ) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Predict clips with the run's ensemble.

    ``paths``: video files (name = file stem), ``(name, path)`` pairs or ClipEntry objects. The run's
    features are re-extracted from each file with the extractor metadata in ``features.json``
    (``transcripts`` maps clip name -> text for text features; without it a text feature uses the
    ASR model recorded at extraction, if any). With ``features_dir`` the features are read by clip
    name from that data root's stores instead (the files need not exist).

    A clip that lacks some of the run's modalities (an audio file has no video, no face was found,
    no transcript for it in ``transcripts``, no stored feature) is predicted from the ones it has,
    as in training; pass a dict as ``missing`` to receive ``{name: {modality: reason}}`` for them.
    A clip with none of them is a failure.

    Returns ``(names, probs (n, K), failures)``: names and probability rows of the clips that could
    be predicted, in input order, and ``(name, reason)`` for the others. Set-up problems (a missing
    run, a checkpoint that is gone, text features without transcripts) raise instead.
    """
    from semimer.utils import pick_device

    run = Path(run_dir)
    entries = clip_entries(paths)
    # cheap checks before loading any model
    check_inputs(run, ensemble.features if ensemble else read_run_features(run), transcripts, features_dir)
    if ensemble is None:
        try:
            device = pick_device(str(device)) if not hasattr(device, "type") else device
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None
        ensemble = load_ensemble(run, device)
    else:
        device = ensemble.device
    gaps: dict[str, dict[str, str]] = {}
    if features_dir is not None:
        feats, ok, failures = _read_stored(ensemble, entries, features_dir, gaps)
    else:
        feats, ok, failures = _reextract(ensemble, entries, transcripts, device, progress, on_clip, gaps)
    if missing is not None:
        missing.update(gaps)
    names = [entries[i][0] for i in ok]
    probs = predict_features(ensemble, feats) if ok else np.zeros((0, len(ensemble.classes)), np.float32)
    return names, probs, failures


def _read_stored(ensemble: Ensemble, entries: list[tuple[str, Path]], features_dir: str | os.PathLike,
                 gaps: dict[str, dict[str, str]]):
    from semimer.data.store import open_store

    root = Path(features_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--features-dir {root} does not exist (a data root with features/ or packed/)")
    stores = {}
    for m, f in ensemble.features.items():
        s = open_store(root, f["feature"])
        if s.dim != int(f["dim"]) or s.level != f.get("level", s.level):
            raise ValueError(f"feature {f['feature']} in {s.path} is {s.level} level with dim {s.dim}, but run "
                             f"{ensemble.run_dir} was trained on {f.get('level')} level, dim {f['dim']}")
        stores[m] = s
    ok, failures, rows = [], [], {m: [] for m in stores}
    for i, (name, _) in enumerate(entries):
        absent = {m: f"no '{s.feature}' feature in {s.path}" for m, s in stores.items() if name not in s}
        if len(absent) == len(stores):
            failures.append((name, f"none of the run's features is stored for clip {name!r}: " + "; ".join(absent.values())))
            continue
        try:
            arrays = {m: s.get(name) if m not in absent else missing_row(ensemble.features[m]) for m, s in stores.items()}
        except (KeyError, ValueError) as exc:
            failures.append((name, str(exc.args[0]) if exc.args else str(exc)))
            continue
        ok.append(i)
        if absent:
            gaps[name] = absent
        for m, a in arrays.items():
            rows[m].append(a)
    return _stack(ensemble, rows), ok, failures


def _reextract(ensemble: Ensemble, entries: list[tuple[str, Path]], transcripts: Mapping[str, str] | None,
               device: Any, progress: bool, on_clip: Callable | None, gaps: dict[str, dict[str, str]]):
    from semimer.extract import extract_clip_features_partial

    needs_text = needs_transcript(ensemble.features)
    text_modality = next((m for m, f in ensemble.features.items() if f["feature"] == needs_text), None)
    metas = [f["extractor"] for f in ensemble.features.values()]
    by_feature = {f["extractor"].get("feature") or f["feature"]: m for m, f in ensemble.features.items()}
    rows: dict[str, list[np.ndarray]] = {m: [] for m in ensemble.features}
    ok: list[int] = []
    failures: list[tuple[str, str]] = []
    any_success = False
    bar = None
    if progress and len(entries) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc="predict", unit="clip", mininterval=1.0)
    try:
        for i, (name, path) in enumerate(entries):
            reason = None
            if not path.is_file():
                reason = f"file {path} not found"
            else:
                text = transcripts.get(name) if transcripts is not None else None
                try:
                    got, lacks = extract_clip_features_partial(path, metas, transcript=text, device=device,
                                                               base_dir=ensemble.run_dir)
                except ImportError as exc:  # an optional package the run's extractor needs
                    raise ValueError(str(exc)) from None
                except (ValueError, FileNotFoundError, KeyError) as exc:
                    msg = str(exc)
                    prefix = f"{path}: "
                    if msg.startswith(prefix):  # a clip problem reported by the runner
                        reason = msg[len(prefix):]
                    elif not any_success:  # set-up problem (checkpoint gone, bad metadata): stop here
                        raise
                    else:
                        reason = f"{type(exc).__name__}: {msg}"
                except Exception as exc:  # noqa: BLE001 - an unexpected failure stays with its clip
                    log.debug("prediction failed on %s", path, exc_info=True)
                    reason = f"unexpected {type(exc).__name__}: {exc}"
                else:
                    any_success = True
                    absent = {by_feature[feat]: why for feat, why in lacks.items()}
                    if text_modality is not None and text is None and text_modality in absent:
                        absent[text_modality] = "no transcript for this clip in --transcripts"
                    if len(absent) == len(ensemble.features):
                        reason = "none of the run's modalities: " + "; ".join(f"{m}: {r}" for m, r in absent.items())
                    else:
                        ok.append(i)
                        if absent:
                            gaps[name] = absent
                        for m, f in ensemble.features.items():
                            feat = f["extractor"].get("feature") or f["feature"]
                            rows[m].append(missing_row(f) if m in absent else got[feat])
            if reason is not None:
                failures.append((name, reason))
            if on_clip is not None:
                on_clip(name, reason)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return _stack(ensemble, rows), ok, failures
