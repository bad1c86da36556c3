"""The MER2024 layout as users have it on disk, read exactly as it is.

```
DATA_DIR/
  label-disdim.csv | labels.csv        name, discrete  (emotion word)
  features/<FEATURE>/<name>.npy        (D,) or (T, D) per clip            -> NpyFolderStore
  packed/<FEATURE>/                    optional, written by `semimer pack`  -> PackedStore
  track_all_candidates.csv | candidates.csv   optional: name  (clips to predict)
  label-transcription.csv              optional: name, chinese|english|text
```

:func:`load_dataset` resolves one feature per modality and returns a :class:`MERData` with the
labeled clips (names + class indices), the unlabeled pool and the candidates, after checking that
that every labeled and candidate clip has at least one of them (errors name the clip and the folder).

Missing modalities (``incomplete=``, ``data.incomplete``):

* ``use`` (default): a clip may lack any feature (no face, no audio stream, no transcript) as long
  as it has one; it is used with what it has (:mod:`semimer.data.ragged` says how a missing modality
  travels). Counts per modality and split are logged and kept in :attr:`MERData.missing`.
* ``drop``: labeled and pool clips lacking any feature are left out (candidates are kept: they must be
  predicted); for comparisons with training on complete clips only.
* ``error``: every labeled and candidate clip must have every feature (pool clips lacking one are
  left out), as before missing modalities were supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from semimer import MER2024_CLASSES
from semimer.data.store import FeatureStore, open_store
from semimer.io import read_csv
from semimer.utils import log

LABEL_FILES = ("label-disdim.csv", "labels.csv")
CANDIDATE_FILES = ("track_all_candidates.csv", "candidates.csv", "track1_candidates.csv", "track_candidates.csv")
LABEL_COLUMNS = ("discrete", "label", "emotion")
TRANSCRIPT_FILES = ("label-transcription.csv", "transcripts.csv")
TRANSCRIPT_COLUMNS = ("chinese", "english", "text", "transcript")


def find_file(root: Path, candidates: Sequence[str], given: str | None = None) -> Path | None:
    if given:
        p = Path(given)
        p = p if p.is_absolute() or p.exists() else root / given
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist")
        return p
    for c in candidates:
        if (root / c).is_file():
            return root / c
    return None


def load_labels(path: str | os.PathLike, classes: Sequence[str] = MER2024_CLASSES) -> dict[str, int]:
    """Read ``name,discrete`` (or ``label``/``emotion``) into ``{name: class index}``.

    Unknown labels and duplicate names are errors naming the file, the row and the clip.
    Rows with an empty label are skipped (some releases keep unlabeled names in the CSV).
    """
    path = Path(path)
    rows = read_csv(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    cols = rows[0].keys()
    if "name" not in cols:
        raise ValueError(f"{path} has no 'name' column (columns: {', '.join(cols)})")
    col = next((c for c in LABEL_COLUMNS if c in cols), None)
    if col is None:
        raise ValueError(f"{path} has none of the label columns {LABEL_COLUMNS} (columns: {', '.join(cols)})")
    index = {c.lower(): i for i, c in enumerate(classes)}
    out: dict[str, int] = {}
    for lineno, row in enumerate(rows, start=2):
        name, lab = row["name"].strip(), (row[col] or "").strip().lower()
        if not name:
            raise ValueError(f"{path}:{lineno}: empty clip name")
        if not lab:
            continue
        if lab not in index:
            raise ValueError(f"{path}:{lineno}: clip {name!r} has unknown label {lab!r}; "
                             f"expected one of {', '.join(classes)} (set data.classes for another corpus)")
        if name in out:
            raise ValueError(f"{path}:{lineno}: clip {name!r} appears twice; keep one row per clip")
        out[name] = index[lab]
    return out


def load_groups(path: str | os.PathLike, column: str, names: Sequence[str]) -> np.ndarray:
    """Group ids (speaker, dialogue, session: ``data.group_column``) of ``names`` from the label
    file; grouped CV keeps every group in one fold. A missing column or an empty id is an error."""
    rows = read_csv(path)
    if column not in rows[0]:
        raise ValueError(f"{path} has no column {column!r} for data.group_column (columns: {', '.join(rows[0])})")
    of = {r["name"].strip(): (r[column] or "").strip() for r in rows}
    empty = [n for n in names if not of.get(n)]
    if empty:
        raise ValueError(f"{path}: {len(empty)} labeled clip(s) have an empty {column!r}, e.g. {empty[:3]}; "
                         f"fill it in (a unique id per clip is a group of one)")
    return np.array([of[n] for n in names], dtype=object)


def load_names(path: str | os.PathLike) -> list[str]:
    """A CSV's ``name`` column (candidates), duplicates rejected."""
    rows = read_csv(path)
    if not rows or "name" not in rows[0]:
        raise ValueError(f"{path} needs a 'name' column")
    names = [r["name"].strip() for r in rows if r["name"].strip()]
    dup = _first_duplicate(names)
    if dup:
        raise ValueError(f"{path}: clip {dup!r} appears twice; keep one row per clip")
    return names


def load_transcripts(path: str | os.PathLike, column: str | None = None) -> dict[str, str]:
    rows = read_csv(path)
    if not rows or "name" not in rows[0]:
        raise ValueError(f"{path} needs a 'name' column")
    col = column or next((c for c in TRANSCRIPT_COLUMNS if c in rows[0]), None)
    if col is None or col not in rows[0]:
        raise ValueError(f"{path}: no transcript column (tried {column or TRANSCRIPT_COLUMNS})")
    return {r["name"].strip(): (r[col] or "").strip() for r in rows}


def _first_duplicate(names: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


@dataclass
class MERData:
    """One dataset with one feature per modality, names resolved."""

    root: Path
    classes: tuple[str, ...]
    stores: dict[str, FeatureStore]  # modality -> store
    labeled: list[str]
    labels: np.ndarray  # (n_labeled,) int64
    unlabeled: list[str]  # clips with a feature (every feature unless data.incomplete=use) and no label; candidates included
    candidates: list[str]
    label_file: Path | None = None
    candidate_file: Path | None = None
    notes: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None  # (n_labeled,) group ids for grouped CV (data.group_column)
    missing: dict = field(default_factory=dict)  # split -> modality -> clips without that feature (non-zero only)

    @property
    def modalities(self) -> list[str]:
        return list(self.stores)

    def dims(self) -> dict[str, int]:
        return {m: s.dim for m, s in self.stores.items()}

    def levels(self) -> dict[str, str]:
        return {m: s.level for m, s in self.stores.items()}

    def features(self, names: Sequence[str]) -> dict[str, np.ndarray | list[np.ndarray]]:
        """Arrays for ``names`` per modality (utterance: stacked; frame: list of (T, D)); a clip
        without a modality has an all-NaN row / zero frames there."""
        return {m: s.get_present(names) for m, s in self.stores.items()}

    def availability(self, names: Sequence[str]) -> np.ndarray:
        """``(len(names), M)`` bool: which clip has which modality (columns in :attr:`modalities` order)."""
        return np.array([[n in s for s in self.stores.values()] for n in names], dtype=bool).reshape(len(names), -1)

    def summary(self) -> dict:
        counts = np.bincount(self.labels, minlength=len(self.classes)).tolist()
        return {"root": str(self.root), "labeled": len(self.labeled),
                "groups": None if self.groups is None else len(set(self.groups.tolist())), "unlabeled": len(self.unlabeled),
                "candidates": len(self.candidates), "class_counts": dict(zip(self.classes, counts)),
                "features": {m: s.describe() for m, s in self.stores.items()},
                **({"missing": self.missing} if self.missing else {})}


INCOMPLETE = ("use", "drop", "error")


def missing_counts(stores: dict[str, FeatureStore], splits: dict[str, Sequence[str]]) -> dict:
    """``{split: {modality: clips without that feature}}``, non-zero counts only."""
    out = {}
    for split, names in splits.items():
        c = {m: sum(1 for n in names if n not in s) for m, s in stores.items()}
        c = {m: v for m, v in c.items() if v}
        if c:
            out[split] = c
    return out


def load_dataset(root: str | os.PathLike, features: dict[str, str], classes: Sequence[str] = MER2024_CLASSES,
                 label_file: str | None = None, candidate_file: str | None = None,
                 prefer: str = "packed", group_column: str | None = None, incomplete: str = "use") -> MERData:
    """Resolve ``features`` (modality -> feature folder name) under ``root`` and check coverage
    (``incomplete``: what to do with clips lacking a feature, see the module docstring)."""
    root = Path(root)
    if incomplete not in INCOMPLETE:
        raise ValueError(f"data.incomplete must be one of {', '.join(INCOMPLETE)}, not {incomplete!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    if not features:
        raise ValueError("no features given: pass at least one of --audio/--text/--video")
    lab_path = find_file(root, LABEL_FILES, label_file)
    if lab_path is None:
        raise FileNotFoundError(f"no label file in {root}: expected one of {', '.join(LABEL_FILES)} (columns name, discrete)")
    labels = load_labels(lab_path, classes)
    stores = {m: open_store(root, f, prefer=prefer) for m, f in features.items() if f}
    for m, s in stores.items():
        log.info("%s: %s (%s, %s level, dim %d, %d clips)", m, s.feature, s.kind, s.level, s.dim, len(s))
    notes = []

    def check(names: Sequence[str], what: str, fix: str) -> None:
        """Every clip needs one feature (``error``: every feature)."""
        if incomplete == "error":
            for m, s in stores.items():
                missing = [n for n in names if n not in s]
                if missing:
                    raise FileNotFoundError(
                        f"{len(missing)} {what} clip(s) have no '{s.feature}' ({m}) feature in {s.path}, "
                        f"e.g. {missing[:3]}; {fix} (or set data.incomplete=use to train with the modalities they have)")
        none = [n for n in names if not any(n in s for s in stores.values())]
        if none:
            raise FileNotFoundError(
                f"{len(none)} {what} clip(s) have none of the features {', '.join(s.feature for s in stores.values())} "
                f"under {root}, e.g. {none[:3]}; {fix}")

    labeled = sorted(labels)
    check(labeled, "labeled", f"extract them or remove them from {lab_path.name}")
    every = [s.names for s in stores.values()]
    union = sorted(set().union(*every))
    complete = {n for n in union if all(n in s for s in stores.values())}
    unlabeled = [n for n in union if n not in labels]
    if incomplete != "use":
        n_partial = sum(1 for n in unlabeled if n not in complete)
        unlabeled = [n for n in unlabeled if n in complete]
        if n_partial:
            notes.append(f"{n_partial} unlabeled clip(s) lack at least one feature and are left out of the pool "
                         f"(data.incomplete={incomplete})")
            log.warning(notes[-1])
    if incomplete == "drop":
        dropped = [n for n in labeled if n not in complete]
        if dropped:
            labeled = [n for n in labeled if n in complete]
            notes.append(f"{len(dropped)} labeled clip(s) lack at least one feature and are left out "
                         f"(data.incomplete=drop), e.g. {dropped[:3]}")
            log.warning(notes[-1])
    cand_path = find_file(root, CANDIDATE_FILES, candidate_file)
    if cand_path is not None:
        candidates = load_names(cand_path)
        check(candidates, f"candidate ({cand_path.name})", "extract them first")
    else:
        candidates = list(unlabeled)
    y = np.array([labels[n] for n in labeled], dtype=np.int64)
    groups = load_groups(lab_path, group_column, labeled) if group_column else None
    missing = missing_counts(stores, {"labeled": labeled, "unlabeled": unlabeled, "candidates": candidates})
    for split, c in missing.items():
        log.info("%s clips without a modality: %s", split, ", ".join(f"{m} {v}" for m, v in c.items()))
    return MERData(root=root, classes=tuple(classes), stores=stores, labeled=labeled, labels=y,
                   unlabeled=unlabeled, candidates=candidates, label_file=lab_path,
                   candidate_file=cand_path, notes=notes, groups=groups, missing=missing)


def load_configured(dc) -> MERData:
    """:func:`load_dataset` with the settings of a :class:`semimer.config.DataConfig`."""
    return load_dataset(dc.root, dc.features(), dc.classes, dc.label_file, dc.candidate_file, dc.prefer,
                        group_column=dc.group_column, incomplete=dc.incomplete)
