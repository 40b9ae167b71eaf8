"""Health reports: the validation split holds out whole targets; degenerate stages get warnings."""

from __future__ import annotations

import numpy as np

from unimir.health import format_report, generator_warnings, quantizer_warnings, split_validation
from unimir.quantizer.synthetic import synthetic_corpus


def test_validation_split_holds_out_whole_targets():
    corpus = synthetic_corpus(60, dim=16, n_clusters=4, queries_per_item=3, seed=1)
    pairs = corpus.pairs()
    train, val = split_validation(pairs, 0.2, seed=0)
    assert len(train) + len(val) == len(pairs)
    assert not set(train.positives) & set(val.positives)  # no validation target is ever a training target
    assert len(set(val.positives)) == 12  # 20 % of the 60 distinct targets, with all their queries
    again_train, again_val = split_validation(pairs, 0.2, seed=0)
    np.testing.assert_array_equal(val.positives, again_val.positives)
    assert split_validation(pairs, 0.0)[1] is None


def _quantizer_report(perplexity: float, distinct: int, quantize: float, dense: float) -> dict:
    return {"items": 1000, "distinct_ids": distinct, "distinct_ratio": distinct / 1000, "mean_bucket": 1000 / distinct,
            "largest_bucket": 50,
            "levels": [{"level": 0, "used": 1.0, "perplexity": 2.5, "dead_codes": 0}] +
                      [{"level": lv, "used": 0.5, "perplexity": perplexity, "dead_codes": 32} for lv in (1, 2)],
            "validation": {"pairs": 100, "quantize_r5": quantize, "dense_r5": dense}}


def test_quantizer_warnings_name_the_problem():
    healthy = _quantizer_report(perplexity=40.0, distinct=900, quantize=0.3, dense=0.4)
    assert quantizer_warnings(healthy, 64) == []
    sick = _quantizer_report(perplexity=2.0, distinct=200, quantize=0.01, dense=0.4)
    warnings = quantizer_warnings(sick, 64)
    assert sum("collapsed" in w for w in warnings) == 2 and any("collide" in w for w in warnings)
    assert any("quantize R@5" in w for w in warnings)
    assert "WARNING: level 1 is collapsed" in format_report("quantizer", {**sick, "warnings": warnings})


def test_generator_warnings_name_the_problem():
    healthy = {"train_exact_id_acc": 0.9, "val_exact_id_acc": 0.3,
               "validation": {"pairs": 50, "generative_r5": 0.4, "quantize_r5": 0.3}}
    assert generator_warnings(healthy) == []
    sick = {"train_exact_id_acc": 0.02, "val_exact_id_acc": 0.0,
            "validation": {"pairs": 50, "generative_r5": 0.1, "quantize_r5": 0.3}}
    warnings = generator_warnings(sick)
    assert len(warnings) == 3 and any("below quantize" in w for w in warnings)
