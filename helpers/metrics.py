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

    def __str__(self) -> str:
        s = f"macro ROC-AUC {self.roc_auc:.4f}, macro PR-AUC {self.pr_auc:.4f} over {len(self.per_tag_roc_auc)} tags"
        return s + (f" ({len(self.skipped)} skipped: {', '.join(self.skipped)})" if self.skipped else "")


def _check_matrix(name: str, a: np.ndarray, shape: tuple | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (clips, tags) matrix, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (like y_true), got {a.shape}")
    return a


def tagging_scores(y_true: np.ndarray, y_score: np.ndarray, tags: Sequence[str] | None = None) -> TaggingScores:
    """Macro and per-tag ROC-AUC and PR-AUC.

    ``y_true`` is ``(n_clips, n_tags)`` 0/1; ``y_score`` the same shape, any
    monotone score (probabilities or logits). ``tags`` names the columns
    (default ``tag0``, ``tag1``...). Tags without both a positive and a
    negative clip are skipped and listed in ``skipped``.
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
    return TaggingScores(float(np.mean(list(roc.values()))), float(np.mean(list(pr.values()))), roc, pr, skipped)


def chance_scores(y_true: np.ndarray) -> dict[str, float]:
    """What random guessing scores on average: ROC-AUC 0.5 for every tag, and a
    PR-AUC equal to each tag's frequency, so the macro PR-AUC of chance is the
    mean tag frequency (over tags with positives and negatives)."""
    y = _check_matrix("y_true", y_true) > 0
    freq = y.mean(0)
    usable = (freq > 0) & (freq < 1)
    return {"roc_auc": 0.5, "pr_auc": float(freq[usable].mean())}


def _top_k_neighbours(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(N, k)`` of the k most similar other items of every row,
    most similar first, ties broken by lower index, the row itself excluded."""
    s = np.array(sim, dtype=np.result_type(sim.dtype, np.float32), copy=True)
    np.fill_diagonal(s, -np.inf)
    # The k-th largest value of each row does not depend on how ties are
    # ordered, so a fast (multi-threaded) top-k may find it.
    kth = torch.topk(torch.from_numpy(s), k, dim=1).values[:, -1].numpy()[:, None]
    chosen = s > kth
    equal = s == kth
    need = k - chosen.sum(1)                                           # ties to take, lowest index first
    n_equal = equal.sum(1)
    chosen |= equal & (n_equal == need)[:, None]                       # rows where every tie is taken
    for r in np.flatnonzero(n_equal > need):                           # rows with more ties than room
        ties = np.flatnonzero(equal[r])[:need[r]]
        chosen[r, ties] = True
    idx = np.nonzero(chosen)[1].reshape(len(s), k)                     # ascending index within each row
    order = np.argsort(-np.take_along_axis(s, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


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


def recall_at_ks(sim: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """Multi-label Recall@K for several K at once: ``{'R@1': ..., 'R@2': ...}``.

    ``sim`` is an ``(N, N)`` similarity matrix (higher is closer, e.g. cosine
    similarities of L2-normalised embeddings); ``labels`` an ``(N, T)`` 0/1
    matrix. Takes well under a second for N = 4,332.
    """
    ks = sorted({int(k) for k in ks})
    sim, y = _check_retrieval(sim, labels, max(ks))
    has_label = y.any(1)
    if not has_label.any():
        raise ValueError("no query has any label: Recall@K is undefined")
    nn = _top_k_neighbours(sim, max(ks))[has_label]                    # (Q, K)
    yq = y[has_label]
    n_true = yq.sum(1)
    found = np.zeros_like(yq)
    out = {}
    for j in range(max(ks)):
        found |= y[nn[:, j]]
        if j + 1 in ks:
            out[f"R@{j + 1}"] = float(np.mean((found & yq).sum(1) / n_true))
    return out


def recall_at_k(sim: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Multi-label Recall@K for one K (see :func:`recall_at_ks`)."""
    return recall_at_ks(sim, labels, (k,))[f"R@{k}"]
