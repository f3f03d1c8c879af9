"""Tag any audio file with a trained checkpoint of the course.

A checkpoint (see :func:`helpers.train.model_checkpoint`) carries the model
name, its options and the tag list, so it is all that tagging needs::

    tagger = Tagger("checkpoints/synthetic/best.pt")
    result = tagger.tag_file("song.mp3")       # any file soundfile reads
    result.top(5)                              # [('drums', 0.93), ...]
    result.taggram                             # (n_windows, n_tags) probabilities

The model slides over the whole file in windows of its training chunk
(3 s, or 3.69 s for the short-chunk models) with a hop of ``hop_seconds``:
each window gives one row of the *taggram* (time x tags, as in Pons et al.'s
musicnn), and the file's tag probabilities are the mean of the rows.
:class:`ClipIndex` finds the clips of a dataset whose embeddings (the
model's ``embed``, averaged over windows and L2-normalised) are closest to a
file's by cosine similarity.

The command line ``python -m helpers tag FILE...`` (in ``helpers/__main__.py``)
uses :class:`Tagger`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .audio import load_audio
from .config import SAMPLE_RATE
from .data import ChunkDataset, TaggedAudio, window_starts
from .train import autocast, embed_clips, fast_layout, load_checkpoint

__all__ = ["TagResult", "Tagger", "ClipIndex", "window_starts"]


@dataclass
class TagResult:
    """What the tagger says about one signal.

    ``probs``: ``(n_tags,)`` tag probabilities of the whole signal (mean of the
    taggram rows); ``taggram``: ``(n_windows, n_tags)`` probabilities per
    window; ``starts``: window start times in seconds ``(n_windows,)``;
    ``embedding``: ``(dim,)`` mean window embedding, L2-normalised.
    """

    source: str
    duration: float
    window: float
    tags: list[str]
    probs: np.ndarray
    taggram: np.ndarray
    starts: np.ndarray
    embedding: np.ndarray
    model_name: str = ""

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable tags, most probable first, as ``(tag, probability)``."""
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(self.tags[i], float(self.probs[i])) for i in order]

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        """A JSON-ready summary: file, duration (s), windows, model, top ``k`` tags."""
        return {"file": self.source, "duration_s": round(self.duration, 3), "windows": len(self.starts),
                "window_s": round(self.window, 3), "model": self.model_name,
                "top_tags": [{"tag": t, "probability": round(p, 4)} for t, p in self.top(k)]}

    def describe(self, k: int = 5) -> str:
        """The top ``k`` tags as an aligned text block, headed by the file."""
        head = (f"{self.source} ({self.duration:.1f} s, {len(self.starts)} window(s) of {self.window:.2f} s, "
                f"model {self.model_name}):")
        top = self.top(k)
        width = max(len(t) for t, _ in top)
        return "\n".join([head] + [f"  {t.ljust(width)}  {p:.3f}" for t, p in top])


class Tagger:
    """A trained model with its tag list, ready to tag waveforms and files.

    ``Tagger(path)`` loads a checkpoint (:func:`helpers.train.load_checkpoint`);
    ``Tagger.from_model(model, tags)`` wraps a model in memory. ``hop_seconds``
    is the default hop between windows (1 s). ``fast_paths``: tag in mixed
    precision where the hardware has it natively, with the channels-last
    layout (:func:`helpers.train.amp_dtype`); off by default, so that the
    published models give musicnn's own numbers (within 1e-4).
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device | None = None,
                 hop_seconds: float = 1.0, fast_paths: bool = False) -> None:
        model, ckpt = load_checkpoint(checkpoint, device)
        if ckpt.get("trained_as") == "embedder":
            raise ValueError(f"{checkpoint} holds an embedder trained with a triplet loss, not a tagger: "
                             f"tag with a tagger checkpoint, e.g. checkpoints/<dataset>/best.pt")
        self._setup(model, list(ckpt["tags"]), ckpt.get("model_name", ""), hop_seconds, ckpt, fast_paths)
        self.path = Path(checkpoint)

    @classmethod
    def from_model(cls, model: nn.Module, tags: Sequence[str], hop_seconds: float = 1.0,
                   model_name: str | None = None, fast_paths: bool = False) -> "Tagger":
        """A tagger around a model already in memory (no checkpoint needed)."""
        tagger = cls.__new__(cls)
        tagger._setup(model, list(tags), model_name or getattr(model, "name", type(model).__name__),
                      hop_seconds, {}, fast_paths)
        tagger.path = None
        return tagger

    def _setup(self, model: nn.Module, tags: list[str], name: str, hop_seconds: float, ckpt: dict,
               fast_paths: bool) -> None:
        n_out = getattr(model, "n_tags", None)
        if n_out is None:
            raise ValueError(f"{name or type(model).__name__} is not a tagger (no n_tags): "
                             f"tag with a classifier checkpoint, e.g. checkpoints/<dataset>/best.pt")
        if n_out != len(tags):
            raise ValueError(f"the model outputs {n_out} tags but {len(tags)} tag names were given")
        self.model, self.tags, self.model_name, self.checkpoint = model.eval(), tags, name, ckpt
        self.hop_seconds, self.fast_paths = hop_seconds, fast_paths
        fast_layout(model, fast_paths)
        self.window = int(getattr(model, "input_samples", 3 * SAMPLE_RATE))
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        frames = getattr(self.model, "patch_frames", None)
        windows = (f"patches of {frames} frames" if frames else f"windows of {self.window / SAMPLE_RATE:.2f} s")
        return f"Tagger({self.model_name}, {len(self.tags)} tags, {windows}, hop {self.hop_seconds:g} s)"

    @torch.no_grad()
    def tag_waveform(self, wav: np.ndarray, source: str = "waveform", hop_seconds: float | None = None,
                     batch_size: int = 16) -> TagResult:
        """Tag a 16 kHz mono float waveform ``(samples,)`` with sliding windows
        (models with ``patch_frames``, musicnn's: patches of the whole
        signal's spectrogram, see :meth:`_tag_patches`)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or len(wav) == 0:
            raise ValueError(f"expected a mono waveform of shape (samples,), got {wav.shape}")
        with autocast(self.device, self.fast_paths):
            return self._tag(wav, source, hop_seconds, batch_size)

    def _tag(self, wav: np.ndarray, source: str, hop_seconds: float | None, batch_size: int) -> TagResult:
        if getattr(self.model, "patch_frames", None):
            return self._tag_patches(wav, source, hop_seconds or self.hop_seconds, batch_size)
        hop = max(1, int(round((hop_seconds or self.hop_seconds) * SAMPLE_RATE)))
        starts = window_starts(len(wav), self.window, hop)
        padded = np.zeros(max(len(wav), self.window), dtype=np.float32)
        padded[:len(wav)] = wav
        frames = torch.from_numpy(np.stack([padded[s:s + self.window] for s in starts]))
        batches = (self.model.embed(frames[i:i + batch_size].to(self.device)) for i in range(0, len(frames), batch_size))
        return self._result(batches, source, len(wav), self.window / SAMPLE_RATE,
                            np.asarray(starts, dtype=np.float64) / SAMPLE_RATE)

    def _tag_patches(self, wav: np.ndarray, source: str, hop_seconds: float, batch_size: int) -> TagResult:
        """musicnn's way: the log-mel spectrogram of the whole signal, cut into
        patches of ``patch_frames`` frames every ``hop`` frames (``hop_seconds``
        converted as musicnn converts its 3 s input length: ``floor((t * 16000 -
        256) / 256) + 1`` frames, so that a hop of 3 s gives 187 frames, musicnn's
        non-overlapping patches), starting at frame 0;
        frames after the last whole patch are left out, as musicnn does. A
        signal shorter than one patch is zero-padded to one."""
        model, n = self.model, self.model.patch_frames
        hop = max(1, int((hop_seconds * SAMPLE_RATE - model.spec.n_fft // 2) // model.spec.hop_length) + 1)
        padded = np.zeros(max(len(wav), model.input_samples), dtype=np.float32)
        padded[:len(wav)] = wav
        spec = model.spec(torch.from_numpy(padded)[None].to(self.device))       # (1, 1, n_mels, frames)
        starts = list(range(0, spec.shape[-1] - n + 1, hop))
        batches = (model.features(model.spec_bn(torch.cat([spec[..., s:s + n] for s in starts[i:i + batch_size]])))
                   for i in range(0, len(starts), batch_size))
        seconds_per_frame = model.spec.hop_length / SAMPLE_RATE
        return self._result(batches, source, len(wav), n * seconds_per_frame,
                            np.asarray(starts, dtype=np.float64) * seconds_per_frame)

    def _result(self, embeddings: Iterator[torch.Tensor], source: str, n_samples: int, window: float,
                starts: np.ndarray) -> TagResult:
        """The :class:`TagResult` of the windows' embeddings ``(batch, dim)``, batch by batch:
        their tag probabilities form the taggram, their normalised mean the file's embedding."""
        probs, embs = [], []
        for z in embeddings:
            probs.append(torch.sigmoid(self.model.linear(z)).float().cpu())
            embs.append(z.float().cpu())
        taggram = torch.cat(probs).numpy()
        emb = torch.nn.functional.normalize(torch.cat(embs).mean(0), dim=0).numpy()
        return TagResult(source=source, duration=n_samples / SAMPLE_RATE, window=window, tags=self.tags,
                         probs=taggram.mean(0), taggram=taggram, starts=starts, embedding=emb,
                         model_name=self.model_name)

    def tag_file(self, path: str | os.PathLike, hop_seconds: float | None = None) -> TagResult:
        """Tag an audio file (any format and rate :func:`helpers.audio.load_audio`
        reads; stereo is mixed to mono, other rates resampled to 16 kHz)."""
        return self.tag_waveform(load_audio(path, SAMPLE_RATE), str(path), hop_seconds)


class ClipIndex:
    """Embeddings of the clips of a dataset split, for "more like this".

    Each clip's embedding is the tagger model's ``embed`` averaged over the
    clip's non-overlapping chunks and L2-normalised (as in
    :func:`helpers.train.embed_clips`); :meth:`nearest` ranks them by cosine
    similarity to a query embedding.
    """

    def __init__(self, tagger: Tagger, data: TaggedAudio, split: str = "test", progress: bool = True,
                 max_batches: int | None = None) -> None:
        chunks = ChunkDataset(data, split, tagger.window)
        self.data, self.split = data, split
        out = embed_clips(tagger.model, chunks, "penultimate", normalize=True, batch_size=32, device=tagger.device,
                          progress=progress, max_batches=max_batches)
        self.embeddings, self.rows = out.values[out.seen], np.asarray(chunks.clip_indices)[out.seen]

    def __len__(self) -> int:
        return len(self.rows)

    def nearest(self, embedding: np.ndarray, k: int = 5, exclude: Sequence[int] = ()) -> list[dict[str, Any]]:
        """The ``k`` clips most similar to ``embedding`` (dataset rows in
        ``exclude`` left out): dicts with ``row``, ``clip_id``, ``similarity``
        (cosine) and ``tags``, most similar first."""
        q = np.asarray(embedding, dtype=np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        sim = self.embeddings @ q
        order = [int(i) for i in np.argsort(-sim, kind="stable") if int(self.rows[i]) not in set(exclude)][:k]
        return [{"row": int(self.rows[i]), "clip_id": self.data.clips[int(self.rows[i])]["clip_id"],
                 "similarity": float(sim[i]), "tags": self.data.tags_of(int(self.rows[i]))} for i in order]
