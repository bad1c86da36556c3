"""Plots saved as PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(confusion, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    plt = _plt()
    cm = np.asarray(confusion, dtype=np.float64)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (counts; colour = row-normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def learning_curves_png(histories: Sequence[Sequence[dict]], path: str | os.PathLike, title: str = "") -> None:
    """Per fold: training loss; WAF on the selection split (solid: the epoch is chosen on it) and on
    the scored fold (dotted: recorded for diagnosis only, nothing is chosen on it)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, hist in enumerate(histories):
        ep = [h["epoch"] for h in hist]
        line = axes[0].plot(ep, [h["train_loss"] for h in hist], label=f"fold {k}")[0]
        if hist and "val_waf" in hist[0]:
            axes[1].plot(ep, [100 * h["val_waf"] for h in hist], color=line.get_color(), label=f"fold {k} selection")
        if hist and "monitor_waf" in hist[0]:
            axes[1].plot(ep, [100 * h["monitor_waf"] for h in hist], color=line.get_color(), linestyle=":",
                         label=f"fold {k} scored fold")
    axes[0].set_title("training loss")
    axes[1].set_title("WAF (%): selection split (solid), scored fold (dotted)", fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if axes[1].lines:
        axes[1].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars_png(groups: dict[str, Sequence[float]], labels: Sequence[str], path: str | os.PathLike,
             title: str = "", ylabel: str = "") -> None:
    """Grouped bar chart: ``groups`` maps a series name to one value per label; a ``None`` or NaN
    value draws no bar (e.g. the F1 of a class absent from the labels: there is nothing to score)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) * max(1, len(groups)) ** 0.5), 3.4))
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(groups.items()):
        vals = [np.nan if v is None else float(v) for v in vals]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if len(groups) > 1:
        ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
