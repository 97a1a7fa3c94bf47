"""Evaluation: ranking metrics (IRRA protocol) and retrieval over a dataset split."""
from ivt.evaluate.metrics import METRIC_KEYS, ranking_metrics

__all__ = ["METRIC_KEYS", "ranking_metrics"]
