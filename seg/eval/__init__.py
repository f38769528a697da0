"""Evaluation on whole volumes: overlap and surface metrics, the paper's detection metrics, reports."""
