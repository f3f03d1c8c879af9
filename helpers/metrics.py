"""Evaluation metrics: tagging scores and the multi-label Recall@K.

`tagging_scores` gives macro and per-tag ROC-AUC and PR-AUC (average
precision) with scikit-learn. `recall_at_k` is the multi-label Recall@K of the
homework (arXiv 2008.03729)::

    R@K = 1/N * sum_q |y_q ∩ (y_1 ∪ ... ∪ y_K)| / |y_q|

where y_1..y_K are the label sets of the K clips most similar to query q. A
query is never its own neighbour, queries without any label are left out of
the mean, and equal similarities are ranked by clip index (lower first).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass
class TaggingScores:
    """Macro and per-tag ROC-AUC and PR-AUC of a tagger.

    ``per_tag_roc_auc`` and ``per_tag_pr_auc`` map tag name to score for the
    tags that could be scored; ``skipped`` lists the tags left out because
    ``y_true`` has no positive (or no negative) for them, where the scores are
    undefined.
    """

    roc_auc: float
    pr_auc: float
    per_tag_roc_auc: dict[str, float] = field(default_factory=dict)
    per_tag_pr_auc: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    roc_auc_interval: tuple[float, float] | None = None
    pr_auc_interval: tuple[float, float] | None = None

    def __str__(self) -> str:
        def interval(iv: tuple[float, float] | None) -> str:
            return f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else ""
        s = (f"macro ROC-AUC {self.roc_auc:.4f}{interval(self.roc_auc_interval)}, macro PR-AUC {self.pr_auc:.4f}"
             f"{interval(self.pr_auc_interval)} over {len(self.per_tag_roc_auc)} tags")
        return s + (f" ({len(self.skipped)} skipped: {', '.join(self.skipped)})" if self.skipped else "")


def _check_matrix(name: str, a: np.ndarray, shape: tuple | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (clips, tags) matrix, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (like y_true), got {a.shape}")
    return a


def tagging_scores(y_true: np.ndarray, y_score: np.ndarray, tags: Sequence[str] | None = None,
                   groups: Sequence | None = None, n_boot: int = 1000) -> TaggingScores:
    """Macro and per-tag ROC-AUC and PR-AUC.

    ``y_true`` is ``(n_clips, n_tags)`` 0/1; ``y_score`` the same shape, any
    monotone score (probabilities or logits). ``tags`` names the columns
    (default ``tag0``, ``tag1``...). Tags without both a positive and a
    negative clip are skipped and listed in ``skipped``. With ``groups`` (the
    song of each clip), the macro scores carry 95 % bootstrap intervals over
    ``n_boot`` resamples of the songs (:func:`bootstrap_intervals`).
    """
    y_true = _check_matrix("y_true", y_true)
    y_score = _check_matrix("y_score", y_score, y_true.shape).astype(np.float64)
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score contains NaN or infinite values")
    tags = list(tags) if tags is not None else [f"tag{i}" for i in range(y_true.shape[1])]
    if len(tags) != y_true.shape[1]:
        raise ValueError(f"{len(tags)} tag names for {y_true.shape[1]} columns")
    y_true = (y_true > 0).astype(np.int64)
    roc, pr, skipped = {}, {}, []
    for j, tag in enumerate(tags):
        pos = int(y_true[:, j].sum())
        if pos == 0 or pos == len(y_true):
            skipped.append(tag)
            continue
        roc[tag] = float(roc_auc_score(y_true[:, j], y_score[:, j]))
        pr[tag] = float(average_precision_score(y_true[:, j], y_score[:, j]))
    if not roc:
        raise ValueError("no tag has both positive and negative clips: the scores are undefined")
    intervals = bootstrap_intervals(y_true, y_score, groups, n_boot) if groups is not None else {}
    return TaggingScores(float(np.mean(list(roc.values()))), float(np.mean(list(pr.values()))), roc, pr, skipped,
                         intervals.get("roc_auc"), intervals.get("pr_auc"))


def _weighted_auc_ap(y: np.ndarray, w: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of one tag for many weightings at once,
    as scikit-learn computes them on the data with each clip repeated by its
    weight: ``y`` (N,) 0/1 in decreasing order of score, ``starts`` the first
    index of each run of equal scores (ties: half a pair for ROC-AUC, one
    threshold for average precision), ``w`` (B, N) the weight of each clip in
    each of B resamples. NaN where a resample has no positive or no negative."""
    pos = np.add.reduceat(w * y, starts, axis=1)                          # (B, levels): per run of equal scores
    neg = np.add.reduceat(w * (1 - y), starts, axis=1)
    pos_total, neg_total = pos.sum(1), neg.sum(1)
    neg_below = neg_total[:, None] - np.cumsum(neg, axis=1)               # negatives scored lower
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(1) / (pos_total * neg_total)
        precision = np.cumsum(pos, axis=1) / np.cumsum(pos + neg, axis=1)
        ap = np.nansum(pos * precision, axis=1) / pos_total
    bad = (pos_total == 0) | (neg_total == 0)
    auc[bad], ap[bad] = np.nan, np.nan
    return auc, ap


def bootstrap_intervals(y_true: np.ndarray, y_score: np.ndarray, groups: Sequence, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the macro ROC-AUC and PR-AUC,
    resampling whole ``groups`` (one value per clip, e.g. its song: clips of
    one song are not independent) with replacement, ``n_boot`` times.
    Returns ``{'roc_auc': (low, high), 'pr_auc': (low, high)}`` at ``level``.
    In each resample the macro average is over the tags with a positive and
    a negative, as in :func:`tagging_scores`."""
    y_true = _check_matrix("y_true", y_true) > 0
    y_score = _check_matrix("y_score", y_score, y_true.shape).astype(np.float64)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.reshape(-1)
    if len(codes) != len(y_true):
        raise ValueError(f"groups must give one group per clip ({len(y_true)}), got {len(codes)}")
    rng = np.random.default_rng(seed)
    n_groups = codes.max() + 1
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))          # the groups of each resample
    counts = np.stack([np.bincount(d, minlength=n_groups) for d in draws])
    weights = counts[:, codes].astype(np.float64)                         # (n_boot, n_clips)
    aucs, aps = [], []
    for t in range(y_true.shape[1]):
        order = np.argsort(-y_score[:, t], kind="stable")
        ranked = y_score[order, t]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])   # runs of equal scores
        auc, ap = _weighted_auc_ap(y_true[order, t].astype(np.float64), weights[:, order], starts)
        aucs.append(auc)
        aps.append(ap)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(per_tag: list[np.ndarray]) -> tuple[float, float]:
        values = np.stack(per_tag, axis=1)                                # (n_boot, n_tags), NaN: not scorable
        scored = np.isfinite(values).sum(1)
        macro = np.where(values == values, values, 0.0).sum(1)[scored > 0] / scored[scored > 0]
        return tuple(float(v) for v in np.percentile(macro, q)) if len(macro) else (float("nan"), float("nan"))
    return {"roc_auc": interval(aucs), "pr_auc": interval(aps)}


def chance_average_precision(n_positives: int, n: int) -> float:
    """The expected average precision (PR-AUC) of a random ranking of ``n``
    items of which ``n_positives`` are positive:

        E[AP] = (P - 1) / (N - 1) * (1 - H_N / N) + H_N / N,   H_N = 1 + 1/2 + ... + 1/N

    It is not the positives' frequency P / N on small sets: 3 positives among
    6 give 0.645, not 0.5 (it tends to P / N as N grows with P / N fixed)."""
    if not 1 <= n_positives <= n:
        raise ValueError(f"need 1 <= n_positives <= n, got {n_positives} positives among {n}")
    if n == 1:
        return 1.0
    h = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (n_positives - 1) / (n - 1) * (1 - h / n) + h / n


def chance_scores(y_true: np.ndarray) -> dict[str, float]:
    """What random guessing scores on average: ROC-AUC 0.5 for every tag, and
    for PR-AUC the exact expected average precision of a random ranking of
    each tag (:func:`chance_average_precision`). Macro averages over the tags
    with positives and negatives, as :func:`tagging_scores`; ``per_tag_pr_auc``:
    one value per such tag, by column index."""
    y = _check_matrix("y_true", y_true) > 0
    n, positives = y.shape[0], y.sum(0)
    usable = np.flatnonzero((positives > 0) & (positives < n))
    per_tag = {int(t): chance_average_precision(int(positives[t]), n) for t in usable}
    return {"roc_auc": 0.5, "pr_auc": float(np.mean(list(per_tag.values()))) if per_tag else float("nan"),
            "per_tag_pr_auc": per_tag}


def _top_k_neighbours(sim: np.ndarray, k: int, groups: np.ndarray | None = None,
                      block_rows: int = 512) -> np.ndarray:
    """Indices ``(N, k)`` of the k most similar other items of every row,
    most similar first, ties broken by lower index, the row itself (and, with
    ``groups``, every item of its group) excluded.

    Rows are taken ``block_rows`` at a time (a few MB, in cache), and a fast
    top-k finds each row's k + 1 largest values; only rows whose k-th value
    equals the (k + 1)-th, a tie with a value that did not fit, are then
    resolved by index."""
    s_all = torch.from_numpy(np.ascontiguousarray(sim, dtype=np.result_type(sim.dtype, np.float32)))
    n = len(s_all)
    if groups is not None:                              # the members of each group, one group after the other
        members = np.argsort(groups, kind="stable")
        sizes = np.bincount(groups)
        first = np.cumsum(sizes) - sizes
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_rows):
        rows = torch.arange(start, min(start + block_rows, n))
        s = s_all[rows].clone()                                            # (b, N)
        s[torch.arange(len(rows)), rows] = -np.inf
        if groups is not None:                                             # (row, member of its group) pairs
            g = groups[start:start + len(rows)]
            count = sizes[g]
            row = np.repeat(np.arange(len(rows)), count)
            offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            s[torch.from_numpy(row), torch.from_numpy(members[np.repeat(first[g], count) + offset])] = -np.inf
        values, idx = torch.topk(s, k + 1, dim=1)                          # the k + 1 largest, any order among ties
        short = torch.nonzero(values[:, k] == values[:, k - 1]).flatten()  # a tie across the k-th place
        values, idx = values[:, :k], idx[:, :k]
        kth = values[:, -1:]
        for r in short.tolist():                                           # ties at the k-th value left out:
            row = s[r]                                                     # take the lowest indices of them
            above = torch.nonzero(row > kth[r]).flatten()
            ties = torch.nonzero(row == kth[r]).flatten()[:k - len(above)]
            idx[r] = torch.cat([above, ties])
            values[r] = row[idx[r]]
        v, i = values.numpy(), idx.numpy()
        order = np.lexsort((i, -v), axis=1)                                # by similarity, then by index
        out[start:start + len(rows)] = np.take_along_axis(i, order, axis=1)
    return out


def _group_codes(groups: Sequence) -> np.ndarray:
    """``groups`` as integer codes 0 .. G - 1, one per item."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    return codes.reshape(-1)


def fewest_outside_group(groups: Sequence) -> int:
    """The fewest items outside an item's own group: the largest K that
    Recall@K with each query's group left out can measure."""
    codes = _group_codes(groups)
    return int(len(codes) - np.bincount(codes).max())


def _check_groups(groups: Sequence | None, n: int, k: int) -> np.ndarray | None:
    if groups is None:
        return None
    codes = _group_codes(groups)
    if len(codes) != n:
        raise ValueError(f"groups must give one group per item ({n}), got {len(codes)}")
    others = fewest_outside_group(codes)                                # of the item with the largest group
    if others < k:
        raise ValueError(f"with its group left out, an item has only {others} candidate neighbours: "
                         f"K = {k} needs at least {k}")
    return codes


def _check_retrieval(sim: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(sim)
    labels = np.asarray(labels)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (N, N) similarity matrix, got shape {sim.shape}")
    if labels.ndim != 2 or labels.shape[0] != sim.shape[0]:
        raise ValueError(f"labels must have shape (N, T) with N = {sim.shape[0]}, got {labels.shape}")
    if np.isnan(sim).any():
        raise ValueError("sim contains NaN values")
    if not 1 <= k < sim.shape[0]:
        raise ValueError(f"k must be between 1 and N - 1 = {sim.shape[0] - 1}, got {k}")
    return sim, labels > 0


def recall_at_ks(sim: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                 groups: Sequence | None = None) -> dict[str, float]:
    """Multi-label Recall@K for several K at once: ``{'R@1': ..., 'R@2': ...}``.

    ``sim`` is an ``(N, N)`` similarity matrix (higher is closer, e.g. cosine
    similarities of L2-normalised embeddings); ``labels`` an ``(N, T)`` 0/1
    matrix. ``groups`` (optional, one value per item, e.g. the song of each
    clip): neighbours from the query's own group are left out, so that a
    clip cannot score by finding other clips of its own song. Takes well
    under a second for N = 4,332.
    """
    ks = sorted({int(k) for k in ks})
    sim, y = _check_retrieval(sim, labels, max(ks))
    codes = _check_groups(groups, len(sim), max(ks))
    has_label = y.any(1)
    if not has_label.any():
        raise ValueError("no query has any label: Recall@K is undefined")
    nn = _top_k_neighbours(sim, max(ks), codes)[has_label]             # (Q, K)
    yq = y[has_label]
    n_true = yq.sum(1)
    found = np.zeros_like(yq)
    out = {}
    for j in range(max(ks)):
        found |= y[nn[:, j]]
        if j + 1 in ks:
            out[f"R@{j + 1}"] = float(np.mean((found & yq).sum(1) / n_true))
    return out


def recall_at_k(sim: np.ndarray, labels: np.ndarray, k: int, groups: Sequence | None = None) -> float:
    """Multi-label Recall@K for one K (see :func:`recall_at_ks`)."""
    return recall_at_ks(sim, labels, (k,), groups)[f"R@{k}"]


def same_group_top1(sim: np.ndarray, groups: Sequence) -> float:
    """The share of queries whose nearest neighbour (the item itself left out)
    belongs to the query's own group, e.g. another clip of the same song."""
    sim = np.asarray(sim)
    codes = _check_groups(groups, len(sim), 0)
    nearest = _top_k_neighbours(sim, 1)[:, 0]
    return float(np.mean(codes[nearest] == codes))


def recall_at_ks_bounds(labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8), groups: Sequence | None = None,
                        n_random: int = 20, seed: int = 0) -> dict[str, dict[str, float]]:
    """What Recall@K can be on these labels: ``chance`` (the mean over
    ``n_random`` random similarity matrices, a random ranking) and ``ceiling``
    (the label vectors themselves as embeddings, cosine: neighbours that share
    the most tags); with ``groups`` as in :func:`recall_at_ks`."""
    y = np.asarray(labels, dtype=np.float64)
    rng = np.random.default_rng(seed)
    runs = [recall_at_ks(rng.random((len(y), len(y))), y, ks, groups) for _ in range(n_random)]
    chance = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    unit = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return {"chance": chance, "ceiling": recall_at_ks(unit @ unit.T, y, ks, groups)}
