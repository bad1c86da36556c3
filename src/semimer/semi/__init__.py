"""The semi-supervised stages around the model: pseudo-labels (:mod:`.pseudo_label`), soft voting
(:mod:`.voting`), the whole MER2024-SEMI recipe (:mod:`.recipe`) and its ablation (:mod:`.ablation`)."""
