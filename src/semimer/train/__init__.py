"""Training: one fit (:mod:`.fit`), contrastive pre-training (:mod:`.pretrain`), K-fold CV and the
run folder it writes (:mod:`.cv`), oversampling inside training folds (:mod:`.oversample`)."""
