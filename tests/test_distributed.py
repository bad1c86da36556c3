"""Scale-out on torch.distributed: two gloo processes under ``torchrun`` on the tiny preset.

* fold-parallel ``semimer train``: rank r trains folds k % 2 == r, every rank scores every fold;
  predictions and OOF probabilities equal those of one process (bit for bit with one thread);
* data-parallel ``semimer pretrain``: each batch split over the ranks, embeddings gathered with
  gradients: per-epoch losses match one process within 2 % (only the random draws differ).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

FAST = ["train.threads=1", "train.progress=false", "model.hidden=16", "model.head_hidden=16"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if Path("/sys/class/net/lo").exists():  # gloo on the loopback interface (no network needed)
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "semimer", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def probs(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.DictReader(open(path, newline="")))
    cols = [k for k in rows[0] if k.startswith("prob_")]
    return [r["name"] for r in rows], np.array([[float(r[c]) for c in cols] for r in rows])


def test_fold_parallel_train_gives_the_predictions_of_one_process(tiny_data, tmp_path):
    from semimer.cli import main

    ds, _ = tiny_data
    args = ["train", "--data", str(ds), "--model", "mrccl", "train.epochs=3", "train.folds=4", *FAST]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    res = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert "CV WAF" in res.stdout and res.stdout.count("CV WAF") == 1, "rank 0 reports, once"
    for f in ("predictions.csv", "oof.csv"):
        n1, p1 = probs(tmp_path / "one" / f)
        n2, p2 = probs(tmp_path / "two" / f)
        assert n1 == n2
        np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-6)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["processes"] == 2 and "processes" not in m1
    assert m1["cv"] == m2["cv"]
    # each fold was trained by exactly one rank and is reused as it is
    assert all((tmp_path / "two" / f"fold_{k}" / "done.json").is_file() for k in range(4))


def test_data_parallel_pretraining_matches_one_process(tiny_data, tmp_path):
    from semimer.cli import main

    ds, _ = tiny_data
    args = ["pretrain", "--data", str(ds), "pretrain.epochs=3", "pretrain.batch_size=64", *FAST]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "pretrain" / "pretrain.json").read_text())
    two = json.loads((tmp_path / "two" / "pretrain" / "pretrain.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    for a, b in zip(one["history"], two["history"]):
        # the same global batches and loss; only dropout / noise / modality draws differ
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02), (one["history"], two["history"])
    assert two["history"][-1]["loss"] < two["history"][0]["loss"]
    assert (tmp_path / "two" / "pretrain" / "model.safetensors").is_file()


def test_recipe_spreads_round_0_and_the_members_folds_together(tiny_data, tmp_path):
    """Without self-training round 0 and the voting members need nothing from each other: their
    3 runs x 3 folds = 9 units go over 2 ranks as 5 + 4 (run by run it would be 2 + 1 three times,
    6 fold-times on rank 0); every prediction equals one process's."""
    from semimer.cli import main

    ds, _ = tiny_data
    args = ["recipe", "--data", str(ds), "pretrain.enabled=false", "train.epochs=2", "train.folds=3",
            "recipe.vote_members=[mrccl,attention,linear]", *FAST]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    for f in ("round_0/oof.csv", "member_attention/oof.csv", "member_linear/predictions.csv", "predictions.csv"):
        n1, p1 = probs(tmp_path / "one" / f)
        n2, p2 = probs(tmp_path / "two" / f)
        assert n1 == n2
        np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-6, err_msg=f)
    ranks = [json.loads((tmp_path / "two" / run / f"fold_{k}" / "result.json").read_text())["trained_by_rank"]
             for run in ("round_0", "member_attention", "member_linear") for k in range(3)]
    assert sorted(ranks) == [0] * 5 + [1] * 4, ranks
    assert "trained_by_rank" not in json.loads((tmp_path / "one" / "round_0" / "fold_0" / "result.json").read_text())
