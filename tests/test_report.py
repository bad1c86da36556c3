"""Tests of the human-readable reports: ``report.md`` (semimer.eval.report) from a hand-made recipe
summary, and the table ``semimer evaluate`` prints. Expected numbers come from scikit-learn or
are written out by hand, never from the code under test."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import f1_score

from semimer.cli import main
from semimer.eval.report import write_report

CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def _data(tmp_path, y):
    return SimpleNamespace(root=tmp_path / "ds", labeled=[f"l{i}" for i in range(len(y))],
                           unlabeled=[f"u{i}" for i in range(7)], candidates=[f"c{i}" for i in range(3)],
                           labels=np.asarray(y), stores={"audio": SimpleNamespace(feature="hubert-large", dim=1024),
                                                         "text": SimpleNamespace(feature="baichuan", dim=5120)})


def _cfg(folds=5):
    return SimpleNamespace(train=SimpleNamespace(folds=folds))


def _onehot(p, k=len(CLASSES)):
    out = np.full((len(p), k), 0.01, np.float32)
    out[np.arange(len(p)), p] = 0.9
    return out


# no "surprise" (index 5) among the true labels; it is predicted once
Y = [0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 0]
P = [0, 0, 1, 1, 1, 2, 2, 0, 3, 4, 5, 0]


def _summary():
    return {
        "seed": 3, "members": ["mrccl", "attention"],
        "stages": {
            "pretrain": {"clips": 40, "epochs": 2, "final_loss": 1.2345},
            "round_0": {"cv_waf": {"mean": 0.8123, "std": 0.0211, "n": 5}, "oof_waf": 0.8011, "n_pseudo": 0,
                        "test": {"waf": 0.7777, "accuracy": 0.7654, "per_class_f1": {}}},
            "round_1": {"cv_waf": {"mean": 0.8345, "std": 0.0123, "n": 5}, "oof_waf": 0.8222,
                        "n_pseudo": [11, 12, 10, 13, 9], "selected": [[3, 2, 2, 2, 1, 1], [4, 2, 2, 2, 1, 1],
                                                                        [2, 2, 2, 2, 1, 1], [5, 2, 2, 2, 1, 1],
                                                                        [1, 2, 2, 2, 1, 1]], "test": None},
            "round_2": {"skipped": True, "reason": "no clip reached its class threshold",
                        "selected": [0, 0, 0, 0, 0, 0]},
            "member_attention": {"oof_waf": 0.7555},
            "vote": {"weights": {"mrccl": 0.7, "attention": 0.3}, "oof_waf_in_sample": 0.8444, "nested_oof_waf": 0.8333,
                     "chosen": "vote"},
        },
        "final": {"cv_waf": {"mean": 0.8345, "std": 0.0123, "n": 5}, "oof_waf": 0.8444,
                  "test": {"waf": 0.7912, "accuracy": 0.8, "macro_f1": 0.7,
                           "per_class_f1": {"neutral": 0.9, "angry": 0.5, "happy": 0.75, "sad": 1.0,
                                            "worried": 0.25, "surprise": None}},
                  "what": "weighted vote of mrccl round 1 and attention"},
        "pseudo_labels_per_round": {
            "1": {"per_fold": [[3, 2, 2, 2, 1, 1], [4, 2, 2, 2, 1, 1]],
                  "total": {"neutral": 7, "angry": 4, "happy": 4, "sad": 4, "worried": 2, "surprise": 2},
                  "accuracy": 0.875},
            "2": {"per_fold": [[0] * 6, [0] * 6], "total": {c: 0 for c in CLASSES}, "accuracy": None},
        },
        "seconds": {"round_0": 1.5, "total": 9.0},
    }


def _row(text, name):
    rows = [ln for ln in text.splitlines() if ln.startswith(f"| {name} |")]
    assert len(rows) == 1, (name, rows)
    return [c.strip() for c in rows[0].strip("|").split("|")]


@pytest.fixture()
def report(tmp_path):
    out = tmp_path / "run"
    for stage in ("round_0", "member_attention", "extra_stage"):
        (out / stage).mkdir(parents=True)
        (out / stage / "learning_curves.png").write_bytes(b"png")
    (out / "round_1").mkdir()  # a stage folder without learning curves: no link
    write_report(out, _summary(), _data(tmp_path, Y), _onehot(P), CLASSES, _cfg())
    return out, (out / "report.md").read_text(encoding="utf-8")


def test_skipped_round_is_shown_as_skipped_without_numbers(report):
    _, text = report
    row = _row(text, "round_2")
    assert row[1] == "skipped: no clip reached its class threshold"
    assert row[4] == "0"  # it selected nothing
    assert all(c in ("", "0") for c in row[2:])
    for previous in ("83.45", "82.22", "81.23"):  # round_1's / round_0's numbers are not repeated
        assert previous not in " ".join(row)


def test_stage_rows_and_missing_keys(report):
    _, text = report
    assert _row(text, "round_0") == ["round_0", "81.23 ± 2.11", "80.11", "0", "–", "77.77", "76.54"]
    # n_pseudo per fold; selected per fold of per-class counts, summed per fold: 3+2+2+2+1+1 = 11, ...
    assert _row(text, "round_1") == ["round_1", "83.45 ± 1.23", "82.22", "11 / 12 / 10 / 13 / 9 per fold",
                                     "11 / 12 / 10 / 13 / 9 per fold", "–", "–"]
    assert _row(text, "member_attention") == ["member_attention", "–", "75.55", "–", "–", "–", "–"]
    assert _row(text, "pretrain")[1] == "40 clips × 2 epochs, final loss 1.234"
    assert "Voting weights (fitted on out-of-fold predictions only): mrccl 0.70, attention 0.30" in text
    assert "Nested OOF WAF 83.33" in text and "chosen: vote" in text and "84.44 with weights fitted on the same" in text


def test_final_line(report):
    _, text = report
    assert ("**Final** (what submission.csv is made of: weighted vote of mrccl round 1 and attention): "
            "CV WAF 83.45 ± 1.23 · OOF WAF 84.44 · test WAF 79.12, accuracy 80.00") in text
    assert "Seed 3; members mrccl, attention; 5-fold CV" in text
    assert "audio `hubert-large` (1024), text `baichuan` (5120)" in text
    assert "12 labeled, 7 unlabeled, 3 candidates" in text


def test_learning_curves_linked_per_stage(report):
    out, text = report
    section = text.split("## Learning curves", 1)[1]
    for stage in ("round_0", "member_attention", "extra_stage"):
        assert f"### {stage}\n\n![{stage} learning curves]({stage}/learning_curves.png)" in section
        assert (out / stage / "learning_curves.png").is_file()
    assert "round_1/learning_curves.png" not in text and "### round_1" not in section
    # summary order first (round_0 before member_attention), then other folders
    assert section.index("### round_0") < section.index("### member_attention") < section.index("### extra_stage")


def test_per_class_f1_table_over_present_classes(report):
    _, text = report
    present = [0, 1, 2, 3, 4]
    ref = f1_score(Y, P, labels=present, average=None)
    for k in present:
        row = _row(text, CLASSES[k])
        assert row[1] == str(Y.count(k)) and row[2] == f"{100 * ref[k]:.2f}"
    assert _row(text, "surprise") == ["surprise", "0", "absent", "absent"]
    assert _row(text, "neutral")[3] == "90.00"
    macro = f1_score(Y, P, labels=present, average="macro")
    assert f"Macro-F1 over the 5 classes present in the labels: OOF {100 * macro:.2f}, test 70.00." in text


def test_pseudo_label_table_new_shape(report):
    out, text = report
    assert ("| round | neutral | angry | happy | sad | worried | surprise | total | per fold | "
            "accuracy (clips with a hidden label) |") in text
    assert _row(text, "1") == ["1", "7", "4", "4", "4", "2", "2", "23", "11 / 12", "87.50"]
    assert _row(text, "2") == ["2", "0", "0", "0", "0", "0", "0", "0", "0 / 0", "–"]
    for f in ("confusion.png", "per_class_f1.png", "pseudo_labels.png"):
        assert (out / f).stat().st_size > 0


def test_old_shapes_and_a_bare_summary(tmp_path):
    out = tmp_path / "run"
    y = [0, 1, 2, 3, 4, 5]
    summary = {"stages": {"round_0": {"cv_waf": {"mean": 0.5, "std": 0.1, "n": 3}, "oof": {"waf": 0.4},
                                      "n_pseudo": 4}, "round_1": {}},
               "final": {}, "pseudo_labels_per_round": {"1": dict(zip(CLASSES, [1, 2, 3, 4, 5, 6]))}}
    write_report(out, summary, _data(tmp_path, y), _onehot(y), CLASSES, None)
    text = (out / "report.md").read_text(encoding="utf-8")
    assert _row(text, "round_0") == ["round_0", "50.00 ± 10.00", "40.00", "4", "–", "–", "–"]
    assert _row(text, "round_1") == ["round_1", "–", "–", "–", "–", "–", "–"]
    assert "**Final** (what submission.csv is made of: –): CV WAF – · OOF WAF – · test –" in text
    assert "| round | neutral | angry | happy | sad | worried | surprise | total |" in text
    assert _row(text, "1") == ["1", "1", "2", "3", "4", "5", "6", "21"]
    assert "## Learning curves" not in text and "Voting weights" not in text


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_evaluate_prints_full_names_and_marks_absent_classes(tmp_path, capsys):
    truth = ["neutral", "neutral", "worried", "worried", "happy", "angry"]
    guess = ["neutral", "worried", "worried", "surprise", "happy", "sad"]
    labels, pred = tmp_path / "labels.csv", tmp_path / "pred.csv"
    _write(labels, [["name", "discrete"]] + [[f"c{i}", t] for i, t in enumerate(truth)])
    _write(pred, [["name", "discrete"]] + [[f"c{i}", g] for i, g in enumerate(guess)])
    assert main(["evaluate", str(pred), str(labels)]) == 0
    text = capsys.readouterr().out
    present = ["neutral", "angry", "happy", "worried"]
    macro = f1_score(truth, guess, labels=present, average="macro")
    assert f"macro-F1   {100 * macro:.2f}" in text
    assert "absent     sad, surprise" in text
    lines = text.splitlines()
    head = next(ln for ln in lines if "neutral" in ln and "surprise" in ln)
    assert head.split() == CLASSES  # full names, e.g. "worried" and "surprise", not "worrie" / "surpri"
    per = dict(zip(present, f1_score(truth, guess, labels=present, average=None)))
    for c in CLASSES:
        row = next(ln.split() for ln in lines if ln.split()[:1] == [c] and len(ln.split()) == 3)
        assert row[1] == ("absent" if c in ("sad", "surprise") else f"{100 * per[c]:.2f}")
        assert row[2] == str(truth.count(c))
    worried = next(ln.split() for ln in lines if ln.split()[:1] == ["worried"] and len(ln.split()) == 7)
    assert worried[1:] == ["0", "0", "0", "0", "1", "1"]  # worried -> worried once, -> surprise once
    assert main(["evaluate", str(pred), str(labels), "--json"]) == 0
    import json

    s = json.loads(capsys.readouterr().out)
    assert s["per_class_f1"]["sad"] is None and s["absent"] == ["sad", "surprise"]
