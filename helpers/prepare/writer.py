"""The writer of the on-disk dataset format (see :mod:`helpers.data`).

Preparing is resumable and atomic: :class:`DatasetWriter` records which clips
are written in ``progress.npy`` (after flushing the audio), and only
:meth:`DatasetWriter.finalize` writes ``meta.json``, through a temporary file
and ``os.replace``. A killed preparation leaves a folder without ``meta.json``
that the next run completes. Clips marked as failed (an unreadable file) keep
their row with split ``excluded`` and are never read by the Datasets.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import SAMPLE_RATE, atomic_write
from ..data import CLIP_FIELDS, EXCLUDED, FORMAT_VERSION, INT16_SCALE, SPLITS

__all__ = ["ClipInfo", "DatasetWriter", "float_to_int16"]


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=True)


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16 (values outside are clipped)."""
    return np.clip(np.round(np.asarray(audio, dtype=np.float32) * INT16_SCALE), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class ClipInfo:
    """One clip of a dataset: its stable id, split and source (an mp3 path, a song id)."""

    clip_id: str
    split: str
    origin: str


class DatasetWriter:
    """Write a dataset folder clip by clip, resumably.

    ``clips`` fixes the order of the rows; ``labels`` is ``(n_clips, n_tags)``
    0/1. Opening a folder that a previous, interrupted run left with the same
    clips, tags and clip length resumes it: :meth:`pending` lists only the
    clips still to write. A folder with other contents is an error unless
    ``overwrite=True``.

    ``source`` describes what produces the audio (e.g. the synthetic
    generator's version): an interrupted folder is resumed only by a writer
    with the same source, so that one dataset never mixes two generators.

    Usage::

        w = DatasetWriter(root, "synthetic", tags, clip_samples, clips, labels)
        for i in w.pending():
            w.write(i, audio_float32)      # or w.fail(i, "why")
            w.checkpoint()                 # every few clips; cheap
        w.finalize(extra={...})
    """

    def __init__(self, root: str | os.PathLike, name: str, tags: Sequence[str], clip_samples: int,
                 clips: Sequence[ClipInfo], labels: np.ndarray, sample_rate: int = SAMPLE_RATE,
                 overwrite: bool = False, source: dict | None = None) -> None:
        self.root = Path(root)
        self.name, self.tags = name, list(tags)
        self.clip_samples, self.sample_rate = int(clip_samples), int(sample_rate)
        self.clips = list(clips)
        labels = np.asarray(labels, dtype=np.uint8)
        if labels.shape != (len(self.clips), len(self.tags)):
            raise ValueError(f"labels must have shape (n_clips, n_tags) = ({len(self.clips)}, {len(self.tags)}), "
                             f"got {labels.shape}")
        bad = {c.split for c in self.clips} - set(SPLITS)
        if bad:
            raise ValueError(f"unknown split names {sorted(bad)}: use {SPLITS}")
        self.labels = labels
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / "meta.json").exists():
            if not overwrite:
                raise FileExistsError(f"{self.root} already holds a finished dataset; "
                                      f"delete it or pass overwrite=True to prepare it again")
            (self.root / "meta.json").unlink()
        plan = {"format_version": FORMAT_VERSION, "name": name, "tags": self.tags,
                "clip_samples": self.clip_samples, "sample_rate": self.sample_rate,
                "clip_ids": [c.clip_id for c in self.clips], "source": source or {}}
        plan_path = self.root / "plan.json"
        audio_path = self.root / "audio.npy"
        progress_path = self.root / "progress.npy"
        resumable = (plan_path.exists() and audio_path.exists() and progress_path.exists()
                     and json.loads(plan_path.read_text()) == plan and not overwrite)
        shape = (len(self.clips), self.clip_samples)
        if resumable:
            self.audio = np.load(audio_path, mmap_mode="r+")
            resumable = self.audio.shape == shape and self.audio.dtype == np.int16
        if resumable:
            state = np.load(progress_path)
            self.done, self.n_samples = state[0].astype(bool), state[1].astype(np.int64)
            self.failed = self._read_failures()
        else:
            for p in (plan_path, progress_path, self.root / "failures.json"):
                p.unlink(missing_ok=True)
            self.audio = np.lib.format.open_memmap(audio_path, mode="w+", dtype=np.int16, shape=shape)
            self.done = np.zeros(len(self.clips), dtype=bool)
            self.n_samples = np.zeros(len(self.clips), dtype=np.int64)
            self.failed = {}
            _write_text(plan_path, json.dumps(plan))
            self.checkpoint()

    @property
    def resumed_clips(self) -> int:
        """Clips already written or failed when the writer was opened."""
        return int(self.done.sum())

    def pending(self) -> list[int]:
        """Row indices of the clips not yet written (nor marked failed)."""
        return [int(i) for i in np.flatnonzero(~self.done)]

    def write(self, index: int, audio: np.ndarray) -> None:
        """Store clip ``index`` (float in [-1, 1] or int16, shape ``(samples,)``).

        Longer clips are cut to ``clip_samples``; shorter ones are zero-padded
        and their true length is recorded.
        """
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"clip {index}: expected mono audio of shape (samples,), got {audio.shape}")
        pcm = audio if audio.dtype == np.int16 else float_to_int16(audio)
        n = min(len(pcm), self.clip_samples)
        self.audio[index, :n] = pcm[:n]
        self.audio[index, n:] = 0
        self.n_samples[index] = n
        self.done[index] = True

    def fail(self, index: int, reason: str) -> None:
        """Mark clip ``index`` as unusable (it is excluded from every split)."""
        self.failed[int(index)] = reason
        self.done[index] = True
        self.n_samples[index] = 0

    def checkpoint(self) -> None:
        """Make every clip written so far durable (audio first, then progress)."""
        self.audio.flush()
        if self.failed:
            _write_text(self.root / "failures.json", json.dumps(self.failed))
        progress = np.stack([self.done.astype(np.int64), self.n_samples])
        atomic_write(self.root / "progress.npy", lambda tmp: np.save(tmp, progress), fsync=True)

    def _read_failures(self) -> dict[int, str]:
        path = self.root / "failures.json"
        return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}

    def finalize(self, extra: dict | None = None) -> dict:
        """Write labels, the clip table and, last, ``meta.json``. Returns the metadata."""
        if not self.done.all():
            raise RuntimeError(f"{int((~self.done).sum())} clips of {self.root} are not written yet")
        self.checkpoint()
        splits = [EXCLUDED if i in self.failed else c.split for i, c in enumerate(self.clips)]
        atomic_write(self.root / "labels.npy", lambda tmp: np.save(tmp, self.labels))

        def write_clips(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(CLIP_FIELDS)
                for i, (c, s) in enumerate(zip(self.clips, splits)):
                    w.writerow([i, c.clip_id, s, int(self.n_samples[i]), c.origin])
        atomic_write(self.root / "clips.csv", write_clips)
        meta = {"format_version": FORMAT_VERSION, "name": self.name, "sample_rate": self.sample_rate,
                "clip_samples": self.clip_samples, "n_clips": len(self.clips), "tags": self.tags,
                "split_sizes": {s: splits.count(s) for s in SPLITS},
                "excluded": {self.clips[i].clip_id: r for i, r in sorted(self.failed.items())}}
        meta.update(extra or {})
        _write_text(self.root / "meta.json", json.dumps(meta, indent=1))
        for p in ("plan.json", "progress.npy", "failures.json"):
            (self.root / p).unlink(missing_ok=True)
        del self.audio
        return meta


