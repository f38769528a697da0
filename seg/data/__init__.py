"""Datasets: datalists and checks, MONAI transforms, the datamodule, splits, synthetic data, the inverse."""
