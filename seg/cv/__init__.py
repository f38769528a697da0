"""K-fold cross-validation: splits, fold training, out-of-fold predictions, evaluation, model bundle."""
