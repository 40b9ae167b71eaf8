import itertools
import random

import numpy as np
import pytest

from unimir.eval.metrics import expected_hit_at_k, random_hit_at_k
from unimir.ranking import Ranking


def brute_force_expected_hit(scores, relevant, k):
    """Average success@k over every order of tied items (the obviously correct, slow definition)."""
    groups = {}
    for i, s in enumerate(scores):
        groups.setdefault(s, []).append(i)
    ordered = [groups[s] for s in sorted(groups, reverse=True)]
    total = count = 0
    for perms in itertools.product(*(itertools.permutations(g) for g in ordered)):
        order = [i for p in perms for i in p]
        total += any(relevant[i] for i in order[:k])
        count += 1
    return total / count


def test_hand_computed_example():
    # scores: 0.9 | 0.5 0.5 0.5 0.5 (one relevant) | 0.1 ; k=3 leaves 2 slots for a group of 4 with 1 relevant
    r = Ranking.from_scores(np.arange(6), [0.9, 0.5, 0.5, 0.5, 0.5, 0.1])
    rel = np.array([False, False, True, False, False, False])
    assert expected_hit_at_k(r, rel, 3) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert expected_hit_at_k(r, rel, 1) == 0.0  # the optimistic rule would say 1 + 1 = rank 2 ... still a miss
    assert expected_hit_at_k(r, rel, 2) == pytest.approx(0.25)  # optimistic "rank = 1 + #higher" would count a hit
    assert expected_hit_at_k(r, rel, 5) == 1.0
    assert expected_hit_at_k(r, np.zeros(6, bool), 5) == 0.0


def test_matches_brute_force_on_random_ties():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 7)
        scores = [rng.choice([0.1, 0.2, 0.3]) for _ in range(n)]
        relevant = [rng.random() < 0.3 for _ in range(n)]
        k = rng.randint(1, n + 1)
        ranking = Ranking.from_scores(np.arange(n), scores)
        rel = np.array(relevant)[ranking.indices]
        assert expected_hit_at_k(ranking, rel, k) == pytest.approx(brute_force_expected_hit(scores, relevant, k))


def test_random_baseline():
    assert random_hit_at_k(100, 1, 10) == pytest.approx(0.1)
    assert random_hit_at_k(10, 2, 10) == 1.0 and random_hit_at_k(10, 0, 5) == 0.0
    reference = brute_force_expected_hit([0.0] * 4, [True, False, False, False], 2)
    assert random_hit_at_k(4, 1, 2) == pytest.approx(reference)
