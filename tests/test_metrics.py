"""Metrics against brute-force implementations of their definitions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers.metrics import chance_scores, recall_at_k, recall_at_ks, tagging_scores


def brute_recall(sim, labels, k):
    """The homework's Recall@K, one query at a time, exactly as written."""
    values = []
    for q in range(len(sim)):
        yq = set(np.flatnonzero(labels[q]))
        if not yq:
            continue
        others = sorted((j for j in range(len(sim)) if j != q), key=lambda j: (-sim[q, j], j))
        union = set()
        for j in others[:k]:
            union |= set(np.flatnonzero(labels[j]))
        values.append(len(yq & union) / len(yq))
    return float(np.mean(values))


def test_worked_example_by_hand():
    # Four clips, three tags. Similarities: 0 is closest to 2, then 1, then 3.
    labels = np.array([[1, 1, 0],     # clip 0: tags a, b
                       [0, 1, 0],     # clip 1: tag b
                       [1, 0, 0],     # clip 2: tag a
                       [0, 0, 1]])    # clip 3: tag c
    sim = np.array([[1.0, 0.5, 0.9, 0.1],
                    [0.5, 1.0, 0.2, 0.3],
                    [0.9, 0.2, 1.0, 0.4],
                    [0.1, 0.3, 0.4, 1.0]])
    # K=1: 0 -> 2 {a}: 1/2;  1 -> 0 {a,b}: 1;  2 -> 0 {a,b}: 1;  3 -> 2 {a}: 0
    assert recall_at_k(sim, labels, 1) == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    # K=2: 0 -> 2,1 {a,b}: 1;  1 -> 0,3: 1;  2 -> 0,3: 1;  3 -> 2,1 {a,b}: 0
    assert recall_at_k(sim, labels, 2) == pytest.approx(0.75)
    assert recall_at_ks(sim, labels, (1, 2)) == {"R@1": pytest.approx(0.625), "R@2": pytest.approx(0.75)}


def test_query_is_never_its_own_neighbour_even_when_tied():
    labels = np.eye(3, dtype=int)
    sim = np.ones((3, 3))                 # everything tied: self must still be skipped
    assert recall_at_k(sim, labels, 1) == 0.0


def test_ties_broken_by_index_and_unlabelled_queries_skipped():
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    sim = np.zeros((4, 4))                # all ties: neighbours in index order
    # q0 -> 1 {0}: 1;  q1 -> 0: 1;  q2 -> 0 {0}: 0;  q3 has no label: skipped
    assert recall_at_k(sim, labels, 1) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_cases_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, t = int(rng.integers(5, 40)), int(rng.integers(1, 8))
    labels = (rng.random((n, t)) < rng.uniform(0.1, 0.5)).astype(np.uint8)
    sim = np.round(rng.standard_normal((n, n)), 1)            # coarse values: many ties
    if seed % 2:
        sim = (sim + sim.T) / 2
    ks = [k for k in (1, 2, 4, 8) if k < n]
    got = recall_at_ks(sim, labels, ks)
    for k in ks:
        assert got[f"R@{k}"] == pytest.approx(brute_recall(sim, labels, k), abs=1e-12)


def test_float32_input_and_errors():
    rng = np.random.default_rng(1)
    e = rng.standard_normal((30, 4)).astype(np.float32)
    labels = rng.random((30, 5)) < 0.3
    sim = e @ e.T
    assert recall_at_k(sim, labels, 3) == pytest.approx(brute_recall(sim, labels, 3))
    with pytest.raises(ValueError, match="square"):
        recall_at_k(sim[:5], labels, 1)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(sim, labels, 30)
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(sim, labels[:10], 1)


def test_tagging_scores_match_per_tag_sklearn_and_skip_empty_tags():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.2).astype(int)
    y[:, 4] = 0                            # no positive: must be skipped, not crash
    y[:, 5] = 1                            # no negative: also undefined
    score = y * 0.3 + rng.random((200, 6))
    s = tagging_scores(y, score, list("abcdef"))
    assert s.skipped == ["e", "f"]
    for j, tag in enumerate("abcd"):
        assert s.per_tag_roc_auc[tag] == pytest.approx(roc_auc_score(y[:, j], score[:, j]))
        assert s.per_tag_pr_auc[tag] == pytest.approx(average_precision_score(y[:, j], score[:, j]))
    assert s.roc_auc == pytest.approx(np.mean([roc_auc_score(y[:, j], score[:, j]) for j in range(4)]))
    assert "skipped" in str(s)
    with pytest.raises(ValueError, match="shape"):
        tagging_scores(y, score[:, :3])


def test_chance_scores_are_what_random_guessing_gets():
    rng = np.random.default_rng(0)
    y = (rng.random((20000, 3)) < np.array([0.05, 0.2, 0.5])).astype(int)
    chance = chance_scores(y)
    random_guess = tagging_scores(y, rng.random(y.shape))
    assert random_guess.roc_auc == pytest.approx(chance["roc_auc"], abs=0.02)
    assert random_guess.pr_auc == pytest.approx(chance["pr_auc"], abs=0.02)
