"""Evaluation: tie-aware Recall@K on M-BEIR query files."""

from .evaluate import EvalResult, evaluate, format_comparison, format_table, write_json
from .metrics import expected_hit_at_k, random_hit_at_k

__all__ = ["EvalResult", "evaluate", "format_table", "format_comparison", "write_json", "expected_hit_at_k",
           "random_hit_at_k"]
