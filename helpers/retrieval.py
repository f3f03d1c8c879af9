"""Metric learning (Question 3): the triplet loss, training embedders with it
(:func:`fit_triplet`), and measuring embeddings by multi-label Recall@K
(:func:`evaluate_retrieval`).

An embedder is any model of :mod:`helpers.models`: its embedding is what it
returns (``layer='output'``; a classifier built with ``n_tags = D`` ends in a
D-dimensional projection) or the input of its last layer
(``'penultimate'``), see :func:`helpers.train.embedding_of`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from .config import choose_device
from .data import ChunkDataset, TaggedAudio, clip_songs, triplet_dataset
from .metrics import fewest_outside_group, recall_at_ks, same_group_top1
from .train import (HOMEWORK_RECIPE, BatchLoss, EpochRecord, Recipe, RunCheckpoints, autocast, embed_clips,
                    embedding_of, fast_layout, model_checkpoint, run_identity, seed_everything, train_epochs, training_loader)

__all__ = ["DISTANCES", "triplet_loss", "similarity_matrix", "retrieval_report", "evaluate_retrieval", "TripletHistory",
           "fit_triplet"]

#: Distances for the triplet loss and for retrieval.
DISTANCES = ("cosine", "euclidean")


def _closeness(x: torch.Tensor, y: torch.Tensor, distance: str) -> torch.Tensor:
    """Pairwise closeness ``(len(x), len(y))``: cosine similarity, or minus
    the Euclidean distance (with a safe gradient at distance 0)."""
    if distance == "cosine":
        return nn.functional.normalize(x, dim=1) @ nn.functional.normalize(y, dim=1).T
    d2 = x.square().sum(1, keepdim=True) + y.square().sum(1) - 2 * x @ y.T
    return -d2.clamp(min=1e-12).sqrt()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.4,
                 distance: str = "cosine", hard_negatives: float | None = None,
                 keys: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Mean triplet loss of embeddings ``(batch, dim)`` (``reduction='none'``:
    the ``(batch,)`` loss of each triplet).

    ``cosine`` (the homework's): ``relu(margin - cos(a, p) + cos(a, n))``;
    ``euclidean``: ``relu(margin + |a - p| - |a - n|)`` on the raw (not
    normalised) embeddings, as ``torch.nn.TripletMarginLoss``.

    ``hard_negatives`` (a fraction in (0, 1]; ``None``: each triplet's own
    negative, the homework's) mines the batch: the candidate negatives of
    anchor ``i`` are every embedding of the batch (anchors, positives,
    negatives) except its own anchor and positive and the anchors and
    positives of triplets with the same key (``keys``: ``(batch,)``, the tag
    or the song the triplet was drawn for); ``cos(a, n)`` (or ``-|a - n|``)
    becomes the mean closeness of its hardest ``ceil(fraction * candidates)``
    candidates, the ones the model confuses most with the anchor.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    if distance == "cosine":
        close_p = nn.functional.cosine_similarity(anchor, positive, dim=1)
    else:
        close_p = -(anchor - positive).norm(dim=1)
    if hard_negatives is None:
        close_n = (nn.functional.cosine_similarity(anchor, negative, dim=1) if distance == "cosine"
                   else -(anchor - negative).norm(dim=1))
    else:
        if not 0 < hard_negatives <= 1:
            raise ValueError(f"hard_negatives must be a fraction in (0, 1], got {hard_negatives}")
        b = len(anchor)
        close = _closeness(anchor, torch.cat([anchor, positive, negative]), distance)   # (b, 3b)
        excluded = torch.zeros_like(close, dtype=torch.bool)
        own = torch.arange(b, device=anchor.device)
        excluded[own, own] = True
        excluded[own, own + b] = True
        if keys is not None:
            same = keys.to(anchor.device)[:, None] == keys.to(anchor.device)[None, :]
            excluded[:, :b] |= same
            excluded[:, b:2 * b] |= same
        k = max(1, math.ceil(hard_negatives * int((~excluded).sum(1).min())))
        close_n = close.masked_fill(excluded, -math.inf).topk(k, dim=1).values.mean(1)
    losses = torch.relu(margin - close_p + close_n)
    if reduction == "none":
        return losses
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}: use 'mean' or 'none'")
    return losses.mean()


def similarity_matrix(embeddings: np.ndarray, distance: str = "cosine") -> np.ndarray:
    """``(N, N)`` similarities of ``(N, dim)`` embeddings, higher is closer:
    cosine similarity, or minus the Euclidean distance."""
    e = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    if distance == "cosine":
        e = nn.functional.normalize(e, dim=1)
        return (e @ e.T).numpy()
    if distance == "euclidean":
        return (-torch.cdist(e, e)).numpy()
    raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")


def retrieval_report(embeddings: np.ndarray, labels: np.ndarray, songs: Sequence, distance: str = "cosine",
                     ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, Any]:
    """Recall@K of clip embeddings ``(N, dim)`` with labels ``(N, T)``, two
    ways: ``other songs`` (neighbours from the query's own song, ``songs``,
    left out: what a clip's embedding knows beyond recognising its song) and
    ``all clips`` (the homework's definition); ``same_song_top1``: the share of
    queries whose nearest clip is one of their own song's. The K that the
    songs leave room for are kept."""
    sim = similarity_matrix(embeddings, distance)
    songs = np.asarray(songs)
    masked_ks = tuple(k for k in ks if k <= fewest_outside_group(songs))
    return {"other songs": recall_at_ks(sim, labels, masked_ks, groups=songs) if masked_ks else {},
            "all clips": recall_at_ks(sim, labels, tuple(k for k in ks if k < len(songs))),
            "same_song_top1": same_group_top1(sim, songs)}


def evaluate_retrieval(model: nn.Module, data: TaggedAudio, split: str = "test", distance: str = "cosine",
                       ks: tuple[int, ...] = (1, 2, 4, 8), chunk_samples: int | None = None, batch_size: int = 64,
                       device: str | torch.device | None = None, progress: bool = True,
                       max_batches: int | None = None, embedding: str = "output",
                       exclude_same_song: bool = False,
                       fast_paths: bool = False) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Multi-label Recall@K of ``model``'s clip embeddings on ``split``.

    A clip's embedding is the mean of its chunk embeddings at layer
    ``embedding`` (``output`` or ``penultimate``, see
    :func:`helpers.train.embedding_of`); clips are ranked by cosine
    similarity or Euclidean distance of these (raw) means, the query itself
    excluded, and with ``exclude_same_song`` every clip of the query's own
    song too (:func:`helpers.data.clip_songs`). Returns ``({'R@1': ..., ...},
    embeddings (n_clips, dim), labels (n_clips, n_tags))``, the embeddings
    L2-normalised for ``cosine`` and raw for ``euclidean``, in the split's
    order. ``max_batches`` (the ``ci`` profile) keeps only the clips of the
    first batches (the first clips of the split); ``fast_paths`` as in
    :func:`helpers.train.predict`.
    """
    chunks = ChunkDataset(data, split, chunk_samples or getattr(model, "input_samples", 48000))
    out = embed_clips(model, chunks, embedding, batch_size=batch_size, device=device, progress=progress,
                      max_batches=max_batches, fast_paths=fast_paths)
    emb, y = out.values[out.seen], chunks.labels.numpy()[out.seen]
    if distance == "cosine":
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    ks = tuple(k for k in ks if k < len(emb))
    if not ks:
        raise ValueError(f"only {len(emb)} clips in {split!r}: too few for Recall@K")
    if exclude_same_song:
        recall = retrieval_report(emb, y, clip_songs(data, split)[out.seen], distance, ks)["other songs"]
        if not recall:
            raise ValueError(f"the clips of {split!r} leave no room for Recall@K outside the query's song")
        return recall, emb, y
    return recall_at_ks(similarity_matrix(emb, distance), y, ks), emb, y


def _output_names(model: nn.Module, tags: list[str]) -> list[str]:
    """Names of a model's outputs for its checkpoint
    (:func:`helpers.train.load_checkpoint` rebuilds a classifier with
    ``n_tags = len(tags)``): the dataset's tags for a tagger, ``embedding_0``
    ... for a classifier whose outputs form an embedding of another size."""
    n_out = getattr(model, "n_tags", None)
    return list(tags) if n_out in (None, len(tags)) else [f"embedding_{i}" for i in range(n_out)]


@dataclass
class TripletHistory(EpochRecord):
    """Per-epoch record of a metric-learning run.

    ``valid_recall`` holds each epoch's ``{'R@1': ..., 'R@8': ...}`` on the
    validation split; ``valid_score`` their mean, whose highest value selects
    the best epoch; ``zero_loss_share`` the share of the epoch's training
    triplets whose loss was zero (already ranked right by the margin: they
    teach nothing).
    """

    score_field: ClassVar[str] = "valid_score"
    mode: ClassVar[str] = "max"

    valid_recall: list[dict] = field(default_factory=list)
    valid_score: list[float] = field(default_factory=list)
    zero_loss_share: list[float] = field(default_factory=list)


def fit_triplet(model: nn.Module, data: TaggedAudio, recipe: Recipe = HOMEWORK_RECIPE, model_name: str = "model",
                model_options: dict | None = None, checkpoint_dir: str | Path | None = None,
                runs_dir: str | Path | None = None, resume: bool = True,
                device: str | torch.device | None = None, progress: bool = True,
                margin: float = 0.4, distance: str = "cosine", sampling: str = "tag",
                embedding: str = "output", hard_negatives: float | None = None) -> TripletHistory:
    """Train ``model`` as an embedder with a triplet loss (metric learning).

    Each epoch draws as many triplets as the train split has clips (see
    :func:`helpers.data.triplet_dataset`: ``sampling='tag'`` is the
    homework's), each clip a random crop of ``model.input_samples`` samples;
    anchor, positive and negative go through the model in one batch of
    ``3 * batch_size`` and :func:`triplet_loss` (``margin``, ``distance``,
    ``hard_negatives``) is minimised on their embeddings at layer
    ``embedding``. After every epoch the validation Recall@1/2/4/8 with the
    query's own song left out (:func:`retrieval_report`, same ``distance``
    and ``embedding``) is measured; its mean selects the best epoch and drives ReduceLROnPlateau
    (mode max). Stopping rules, checkpoints (``checkpoint_dir`` or ``runs_dir``: ``last.pt`` to resume,
    ``best.pt`` a model checkpoint with ``trained_as='embedder'``), exact
    resume and the NaN stop are those of :func:`helpers.train.fit`. At the
    end the model holds the weights of its best epoch.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    embed = embedding_of(model, embedding)
    loss_spec = {"margin": margin, "distance": distance, "sampling": sampling, "embedding": embedding,
                 "hard_negatives": hard_negatives}
    identity = run_identity(model, data, recipe, model_name, model_options, loss=loss_spec)
    device = choose_device(device)
    generator = seed_everything(recipe.seed)
    fast_layout(model.to(device), recipe.channels_last)
    chunk = getattr(model, "input_samples", 48000)
    loader = training_loader(triplet_dataset(data, "train", chunk, sampling), recipe, generator, device)

    zero = {"triplets": 0, "zero": 0}                    # this epoch's triplets, and those with a zero loss

    def step(batch: tuple) -> BatchLoss:
        a, p, n, keys = batch
        with autocast(device, recipe.amp):
            z = embed(torch.cat([a, p, n]).to(device, non_blocking=True))
        za, zp, zn = z.float().chunk(3)
        losses = triplet_loss(za, zp, zn, margin, distance, hard_negatives, keys, reduction="none")
        zero["triplets"] += len(losses)
        zero["zero"] += int((losses.detach() == 0).sum())
        return BatchLoss(losses.mean(), len(a), 3 * len(a))

    valid_songs = clip_songs(data, "valid")

    def validate() -> dict:
        _, emb, y = evaluate_retrieval(model, data, "valid", distance, batch_size=recipe.eval_batch_size,
                                       device=device, progress=False, max_batches=recipe.max_batches,
                                       embedding=embedding, fast_paths=recipe.amp)
        report = retrieval_report(emb, y, valid_songs[:len(emb)], distance)
        recall = report["other songs"] or report["all clips"]     # a split too small to leave a song out: all
        share = zero["zero"] / max(zero["triplets"], 1)           # validate() closes the epoch: count the next
        zero.update(triplets=0, zero=0)
        return {"valid_recall": recall, "valid_score": float(np.mean(list(recall.values()))), "zero_loss_share": share}

    def best_payload(epoch: int, values: dict) -> dict:
        return model_checkpoint(model, model_name, _output_names(model, data.tags), model_options, epoch=epoch,
                                valid_recall=values["valid_recall"], trained_as="embedder", loss=loss_spec,
                                dataset_tags=data.tags, dataset=data.meta.get("name", ""))

    checkpoints = RunCheckpoints.for_run(identity, checkpoint_dir, runs_dir, resume)
    return train_epochs(model, recipe, name=model_name, loader=loader, generator=generator, step=step,
                        validate=validate, history=TripletHistory(), checkpoints=checkpoints,
                        best_payload=best_payload, device=device, progress=progress, loss_name="triplet loss")
