"""``linear``: multinomial logistic regression on the standardised concatenation of the modalities.

With a few hundred labels this is the model to beat, and a cheap, well-calibrated vote member.
It is *fitted by scikit-learn*, not by gradient steps: :meth:`LinearModel.fit_direct` runs
``LogisticRegressionCV`` (pure L2, lbfgs) with the inverse regularisation ``C`` chosen from
``model.linear_cs`` by a seeded stratified inner 5-fold CV on the training clips it is given
(weighted F1 by default, ``model.linear_scoring=log_loss`` for calibration; grouped like the
outer folds when ``data.group_column`` is set; never the fold being scored), then copies the
coefficients into a torch ``Linear`` so that the model saves as safetensors, predicts on any
device and votes like every other model.

It is fitted on the whole training part of a fold (no clips held back for epoch selection:
``train.select`` does not apply). Oversampling does not apply (duplicates would sit on both sides
of the inner CV and bias ``C``);
``model.linear_class_weight=balanced`` reweights classes instead.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from semimer.models import register_model
from semimer.models.base import EmotionModel


def _waf_scorer(estimator, X, y) -> float:
    """Weighted F1 of ``estimator`` on ``(X, y)``: a plain callable, because scikit-learn 1.9's
    LogisticRegressionCV rebuilds string F1 scorers with ``pos_label`` twice on binary problems."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, estimator.predict(X), average="weighted", zero_division=0))


#: model.linear_scoring -> the scorer of the inner CV that chooses C
SCORING = {"waf": _waf_scorer, "log_loss": "neg_log_loss"}  # checked in semimer.config_checks too
#: logit given to a class absent from the training clips (probability ~0, never predicted)
ABSENT_LOGIT = -30.0


@register_model("linear")
class LinearModel(EmotionModel):
    def __init__(self, dims: dict[str, int], num_classes: int, cfg, levels: dict[str, str] | None = None, **_):
        super().__init__(dims, num_classes, levels)
        self.cs = [float(c) for c in cfg.linear_cs]
        if not self.cs or any(c <= 0 for c in self.cs):
            raise ValueError(f"model.linear_cs must be a non-empty list of positive numbers, got {cfg.linear_cs}")
        if cfg.linear_class_weight not in (None, "balanced"):
            raise ValueError(f"model.linear_class_weight must be null or balanced, got {cfg.linear_class_weight!r}")
        self.class_weight = cfg.linear_class_weight
        scoring = getattr(cfg, "linear_scoring", "waf")
        if scoring not in SCORING:
            raise ValueError(f"model.linear_scoring must be one of {', '.join(SCORING)}, got {scoring!r}")
        self.scoring = SCORING[scoring]
        self.classifier = nn.Linear(sum(dims.values()), num_classes)

    def _design(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = self.standardizer(batch)
        return torch.cat([batch[m] for m in self.modalities], dim=1)

    def _forward_std(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.classifier(torch.cat([x[m] for m in self.modalities], dim=1))
        return {"logits": logits, "probs": torch.softmax(logits, dim=-1)}

    @torch.no_grad()
    def fit_direct(self, train: dict[str, torch.Tensor], y: np.ndarray, seed: int, weight: np.ndarray | None = None,
                   groups=None) -> dict:
        """Fit on ``train`` (standardiser already fitted), ``C`` by inner CV, optional per-clip
        ``weight`` (sample weights); returns what was chosen. ``groups`` (one id per clip, e.g. the
        dialogue of ``data.group_column``): the inner CV keeps every group on one side, as the outer
        folds do; utterances of one dialogue on both sides would favour a weakly regularised ``C``."""
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

        X = self._design({m: train[m] for m in self.modalities}).double().cpu().numpy()
        y = np.asarray(y, dtype=np.int64)
        counts = np.bincount(y, minlength=self.num_classes)
        n_splits = int(min(5, counts[counts > 0].max()))
        if groups is not None:
            groups = np.asarray([str(g) for g in groups], dtype=object)
            if len(groups) != len(y):
                raise ValueError(f"linear model: {len(groups)} group ids for {len(y)} training clips")
            n_splits = min(n_splits, len(set(groups.tolist())))
        if len(np.unique(y)) < 2 or n_splits < 2:
            raise ValueError("the linear model needs at least two classes with two clips each in a training fold"
                             + (" (and two groups)" if groups is not None else ""))
        import warnings

        if groups is None:
            cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
        else:  # LogisticRegressionCV takes the splits as a list
            cv = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(X, y, groups))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            clf = LogisticRegressionCV(Cs=self.cs, l1_ratios=(0.0,), cv=cv,
                                       scoring=self.scoring, max_iter=3000, class_weight=self.class_weight,
                                       use_legacy_attributes=False).fit(X, y, sample_weight=weight)
        coef = np.zeros((self.num_classes, X.shape[1]))
        bias = np.full(self.num_classes, ABSENT_LOGIT)
        present = clf.classes_.astype(np.int64)
        if len(present) == 2:  # sklearn's binary form: P(c1) = sigmoid(w·x + b) = softmax([0, w·x + b])[1]
            coef[present[1]], bias[present[0]], bias[present[1]] = clf.coef_[0], 0.0, clf.intercept_[0]
        else:
            coef[present], bias[present] = clf.coef_, clf.intercept_
        self.classifier.weight.copy_(torch.as_tensor(coef, dtype=self.classifier.weight.dtype))
        self.classifier.bias.copy_(torch.as_tensor(bias, dtype=self.classifier.bias.dtype))
        return {"C": float(np.ravel(clf.C_)[0]), "inner_folds": n_splits, "inner_grouped": groups is not None}
