"""Metrics against brute-force implementations of their definitions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers.metrics import (bootstrap_intervals, chance_average_precision, chance_scores, recall_at_k, recall_at_ks, recall_at_ks_bounds,
                             same_group_top1, tagging_scores)


def brute_recall(sim, labels, k, groups=None):
    """The homework's Recall@K, one query at a time, exactly as written
    (with ``groups``: neighbours of the query's own group left out)."""
    values = []
    for q in range(len(sim)):
        yq = set(np.flatnonzero(labels[q]))
        if not yq:
            continue
        others = sorted((j for j in range(len(sim)) if j != q and (groups is None or groups[j] != groups[q])),
                        key=lambda j: (-sim[q, j], j))
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


def random_ranking_aps(p, n, draws, rng):
    """The average precision of ``draws`` random rankings of n items, p positive."""
    ranks = np.sort(np.argsort(rng.random((draws, n)), axis=1)[:, :p], axis=1) + 1   # ranks of the positives
    return (np.arange(1, p + 1) / ranks).mean(axis=1)


@pytest.mark.parametrize("p, n", [(3, 6), (1, 20), (5, 5), (1, 1), (2, 9), (12, 40)])
def test_chance_average_precision_is_the_mean_ap_of_random_rankings(p, n):
    rng = np.random.default_rng(p * 100 + n)
    y, s = np.r_[np.ones(p), np.zeros(n - p)], rng.random(n)
    assert average_precision_score(y, s) == pytest.approx(np.mean(np.arange(1, p + 1) / (np.sort(
        np.argsort(np.argsort(-s))[:p]) + 1)))                       # the simulation's AP is sklearn's
    simulated = random_ranking_aps(p, n, 200000, rng).mean()
    assert chance_average_precision(p, n) == pytest.approx(simulated, abs=2e-3)


def test_the_worked_example_of_notebook_01_is_below_chance():
    y, s = np.array([0, 1, 1, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    assert chance_average_precision(3, 6) == pytest.approx(0.645, abs=5e-4)
    assert average_precision_score(y, s) < chance_average_precision(3, 6)
    with pytest.raises(ValueError):
        chance_average_precision(0, 6)


def test_chance_pr_auc_is_exact_on_a_small_test_set():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [0, 0], [1, 0], [0, 0], [0, 0]])
    chance = chance_scores(y)
    assert chance["per_tag_pr_auc"] == {0: pytest.approx(chance_average_precision(3, 8)),
                                        1: pytest.approx(chance_average_precision(2, 8))}
    assert chance["pr_auc"] > y.mean(0).mean()            # above the mean frequency on 8 clips
    rng = np.random.default_rng(1)
    simulated = np.mean([tagging_scores(y, rng.random(y.shape)).pr_auc for _ in range(500)])
    assert chance["pr_auc"] == pytest.approx(simulated, abs=0.02)


def test_chance_scores_are_what_random_guessing_gets():
    rng = np.random.default_rng(0)
    y = (rng.random((20000, 3)) < np.array([0.05, 0.2, 0.5])).astype(int)
    chance = chance_scores(y)
    random_guess = tagging_scores(y, rng.random(y.shape))
    assert random_guess.roc_auc == pytest.approx(chance["roc_auc"], abs=0.02)
    assert random_guess.pr_auc == pytest.approx(chance["pr_auc"], abs=0.02)


def test_recall_leaves_out_the_querys_own_group():
    # Two clips per song; each clip's nearest clip is its song's other clip, which shares its tags.
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 1]])
    songs = np.array(["s1", "s1", "s2", "s2", "s3", "s3"])
    e = np.array([[1.0, 0.0], [0.98, 0.2], [0.0, 1.0], [0.2, 0.98], [0.7, 0.7], [0.6, 0.8]])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    assert recall_at_k(sim, labels, 1) == pytest.approx(1.0)          # the song's other clip answers
    masked = recall_at_k(sim, labels, 1, groups=songs)
    assert masked < 1.0
    assert same_group_top1(sim, songs) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    for k in (1, 2, 3):
        assert recall_at_k(sim, labels, k, groups=songs) == pytest.approx(brute_recall(sim, labels, k, songs))
        big = rng.random((30, 30))
        big_labels, big_groups = (rng.random((30, 5)) < 0.4).astype(int), rng.integers(0, 8, 30)
        assert recall_at_k(big, big_labels, k, groups=big_groups) == pytest.approx(
            brute_recall(big, big_labels, k, big_groups))
    with pytest.raises(ValueError, match="candidate"):
        recall_at_ks(sim, labels, (5,), groups=songs)
    with pytest.raises(ValueError, match="one group per item"):
        recall_at_k(sim, labels, 1, groups=songs[:4])


def test_recall_bounds_bracket_any_embedding():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 6)) < 0.3).astype(int)
    labels[labels.sum(1) == 0, 0] = 1
    bounds = recall_at_ks_bounds(labels, (1, 4), n_random=10)
    e = rng.normal(size=(60, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    some = recall_at_ks(e @ e.T, labels, (1, 4))
    for k in ("R@1", "R@4"):
        assert bounds["chance"][k] < bounds["ceiling"][k]
        assert some[k] < bounds["ceiling"][k]
        assert some[k] == pytest.approx(bounds["chance"][k], abs=0.15)  # a random embedding is a random ranking


def test_song_bootstrap_resamples_whole_songs_and_brackets_the_score():
    from helpers.metrics import _weighted_auc_ap
    rng = np.random.default_rng(0)
    y = (rng.random((120, 5)) < 0.3).astype(int)
    y[0], y[1] = 1, 0                                      # every tag has a positive and a negative
    s = rng.random((120, 5)) + 0.4 * y
    songs = np.repeat(np.arange(30), 4)
    # a weighted score is the score of the data with each clip repeated by its weight
    w = rng.integers(0, 3, size=120).astype(float)
    tied = np.round(s, 1)                                   # many equal scores: ties count as sklearn counts them
    for scores in (s[:, 2], tied[:, 2], np.zeros(120)):
        order = np.argsort(-scores, kind="stable")
        ranked = scores[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        auc, ap = _weighted_auc_ap(y[order, 2].astype(float), w[None, order], starts)
        rows = np.repeat(np.arange(120), w.astype(int))
        assert auc[0] == pytest.approx(roc_auc_score(y[rows, 2], scores[rows]))
        assert ap[0] == pytest.approx(average_precision_score(y[rows, 2], scores[rows]))
    constant = bootstrap_intervals(y, np.tile(y.mean(0), (120, 1)), songs, n_boot=200)     # the prior-only predictor
    assert constant["roc_auc"] == pytest.approx((0.5, 0.5))
    point = tagging_scores(y, s)
    iv = bootstrap_intervals(y, s, songs, n_boot=400)
    assert iv["roc_auc"][0] < point.roc_auc < iv["roc_auc"][1] and iv["pr_auc"][0] < point.pr_auc < iv["pr_auc"][1]
    assert bootstrap_intervals(y, s, songs, n_boot=400) == iv                     # seeded
    # songs whose clips are copies of each other: resampling clips would understate the spread
    copies = np.repeat(y[:30], 4, axis=0), np.repeat(s[:30], 4, axis=0)
    by_song = bootstrap_intervals(*copies, songs, n_boot=400)["roc_auc"]
    by_clip = bootstrap_intervals(*copies, np.arange(120), n_boot=400)["roc_auc"]
    assert by_song[1] - by_song[0] > 1.5 * (by_clip[1] - by_clip[0])


def test_fewest_outside_group_is_the_largest_measurable_k():
    from helpers.metrics import fewest_outside_group
    assert fewest_outside_group(["a", "a", "b", "c"]) == 2              # a clip of song a: only b and c are left
    assert fewest_outside_group([1, 2, 3]) == 2
    assert fewest_outside_group(["x"] * 4) == 0
