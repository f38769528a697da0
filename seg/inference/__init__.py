"""Prediction on NIfTI volumes: pre-processing as in training, sliding window or whole volume, fold
ensemble, mirroring TTA, inversion to the input's grid, atomic NIfTI writing."""
