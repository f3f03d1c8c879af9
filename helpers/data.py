"""The on-disk dataset format and the torch Datasets that read it.

Every dataset of the course, synthetic or MagnaTagATune, is prepared once into
one folder with the same layout, so that every notebook runs unchanged on
either::

    ROOT/
      audio.npy      int16 (n_clips, clip_samples), memory-mapped; clips shorter
                     than clip_samples are zero-padded (see clips.csv n_samples)
      labels.npy     uint8 (n_clips, n_tags), 0/1
      clips.csv      one row per clip: index, clip_id, split, n_samples, origin
                     (where the clip came from: an mp3 path, or a song id)
      meta.json      format version, name, sample rate, tag list, split sizes
                     and any extra facts of the source. Written last: a folder
                     without it is not a dataset (yet).

The writer of this format is :class:`helpers.prepare.writer.DatasetWriter`
(resumable and atomic); this module only reads it. Clips marked as failed
(an unreadable file) keep their row with split ``excluded`` and are never read
by the Datasets.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
EXCLUDED = "excluded"
INT16_SCALE = 32768.0
#: Its inverse in float32 (a power of two: int16 samples times it are exact).
_FROM_INT16 = np.float32(1 / INT16_SCALE)
CLIP_FIELDS = ("index", "clip_id", "split", "n_samples", "origin")


class DatasetNotReadyError(RuntimeError):
    """The dataset folder is missing, incomplete or of another format version."""


class TaggedAudio:
    """Read-only view of a prepared dataset folder.

    Attributes: ``meta`` (dict), ``tags`` (list of str), ``audio`` (int16
    memmap ``(n_clips, clip_samples)``), ``labels`` (uint8 ``(n_clips,
    n_tags)``), ``clips`` (list of dicts from clips.csv), ``sample_rate``.

    Pickling (a DataLoader worker started with ``spawn`` or ``forkserver``,
    the default on macOS and from Python 3.14) sends everything but the
    memory map, which the worker opens again: a worker never receives the
    audio itself (20 GB for MagnaTagATune).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            what = "is incomplete (its preparation did not finish)" if self.root.exists() else "does not exist"
            plan = self.root / "plan.json"
            name = json.loads(plan.read_text()).get("name", "") if plan.exists() else self.root.name
            kind = "mtat" if name.startswith("mtat") else "synthetic"
            raise DatasetNotReadyError(
                f"the dataset at {self.root} {what}. Prepare it with `python -m helpers prepare {kind} "
                f"--root {self.root}`; an interrupted run resumes where it stopped.")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DatasetNotReadyError(
                f"the dataset at {self.root} has format version {self.meta.get('format_version')}, this code "
                f"reads version {FORMAT_VERSION}: prepare it again (delete the folder, then `python -m helpers "
                f"prepare {self.meta.get('name', 'synthetic')} --root {self.root}`)")
        self.tags: list[str] = list(self.meta["tags"])
        self.sample_rate: int = int(self.meta["sample_rate"])
        self.audio = self._open_audio()
        self.labels = np.load(self.root / "labels.npy")
        with open(self.root / "clips.csv", newline="", encoding="utf-8") as f:
            self.clips = list(csv.DictReader(f))
        for c in self.clips:
            c["index"], c["n_samples"] = int(c["index"]), int(c["n_samples"])

    def _open_audio(self) -> np.ndarray:
        return np.load(self.root / "audio.npy", mmap_mode="r")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["audio"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.audio = self._open_audio()

    def __len__(self) -> int:
        return len(self.clips)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s} {n}" for s, n in self.meta["split_sizes"].items())
        return (f"TaggedAudio({self.meta['name']!r}: {len(self)} clips of "
                f"{self.meta['clip_samples'] / self.sample_rate:.2f} s, {len(self.tags)} tags; {sizes})")

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices of the clips of ``split`` ('train', 'valid' or 'test')."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
        return np.array([c["index"] for c in self.clips if c["split"] == split], dtype=np.int64)

    def waveform(self, index: int) -> np.ndarray:
        """The whole clip ``index`` as float32 in [-1, 1], shape ``(n_samples,)``."""
        n = self.clips[index]["n_samples"]
        return self.audio[index, :n].astype(np.float32) / INT16_SCALE

    def tags_of(self, index: int) -> list[str]:
        """Names of the tags of clip ``index``."""
        return [t for t, y in zip(self.tags, self.labels[index]) if y]


def _as_dataset(data: "TaggedAudio | str | os.PathLike") -> TaggedAudio:
    return data if isinstance(data, TaggedAudio) else TaggedAudio(data)


def _clips_of(data: TaggedAudio, split: str) -> np.ndarray:
    """Row indices of the clips of ``split``; an empty split is an error."""
    rows = data.split_indices(split)
    if len(rows) == 0:
        raise ValueError(f"the {split!r} split of the dataset at {data.root} has no clips: prepare the dataset "
                         f"again, or choose another split")
    return rows


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start offsets of the sliding windows over a signal of ``n_samples``.

    Windows start every ``hop`` samples; one more window, aligned with the end,
    is added when the last regular one stops short of it, so that every sample
    is covered. A signal shorter than ``window`` gives the single start 0 (the
    window is zero-padded).
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be positive sample counts, got {window} and {hop}")
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


def chunk_starts(n_samples: int, chunk_samples: int) -> list[int]:
    """Start offsets of the evaluation chunks of a clip: back to back, plus one
    aligned with the clip's end when they stop short of it, so that every
    sample is heard (a 6 s clip in 3.69 s chunks: two chunks that overlap by
    1.4 s, not one that drops 39 % of the clip); a clip shorter than a chunk
    gives one zero-padded chunk. The rule of :class:`helpers.tagging.Tagger`'s
    sliding window with a hop of one chunk."""
    return window_starts(n_samples, chunk_samples, chunk_samples)


class RandomCropDataset(Dataset):
    """Training view: item ``i`` is a random crop of clip ``i`` of ``split``.

    Returns ``(waveform, labels)``: float32 ``(chunk_samples,)`` and float32
    ``(n_tags,)``. Clips shorter than a chunk are zero-padded. Crops draw
    from torch's random generator: the main process's (seeded by
    :func:`helpers.train.seed_everything`) without DataLoader workers, each
    worker's (seeded by PyTorch from the loader's generator) with them, so a
    seeded DataLoader with a given number of workers gives repeatable crops.
    An empty split is an error.
    """

    def __init__(self, data: "TaggedAudio | str | os.PathLike", split: str, chunk_samples: int = 48000) -> None:
        self.data = _as_dataset(data)
        self.indices = _clips_of(self.data, split)
        self.chunk_samples = int(chunk_samples)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[i])
        n = self.data.clips[row]["n_samples"]
        start = int(torch.randint(0, n - self.chunk_samples + 1, ()).item()) if n > self.chunk_samples else 0
        crop = np.zeros(self.chunk_samples, dtype=np.float32)
        piece = self.data.audio[row, start:start + min(n, self.chunk_samples)]
        np.multiply(piece, _FROM_INT16, out=crop[:len(piece)])       # in float32, no float64 temporary
        return torch.from_numpy(crop), torch.from_numpy(self.data.labels[row].astype(np.float32))


class ChunkDataset(Dataset):
    """Evaluation view: the chunks of every clip of ``split`` that cover it
    whole (:func:`chunk_starts`).

    Item ``j`` is ``(waveform, clip_position)``: float32 ``(chunk_samples,)``
    and the position of its clip in ``clip_indices`` (0 .. n_clips - 1), so
    that predictions can be averaged per clip. ``labels`` is the float32
    ``(n_clips, n_tags)`` target matrix in the same order.
    """

    def __init__(self, data: "TaggedAudio | str | os.PathLike", split: str, chunk_samples: int = 48000) -> None:
        self.data = _as_dataset(data)
        self.clip_indices = _clips_of(self.data, split)
        self.chunk_samples = int(chunk_samples)
        self.items = [(pos, int(row), start) for pos, row in enumerate(self.clip_indices)
                      for start in chunk_starts(self.data.clips[int(row)]["n_samples"], self.chunk_samples)]
        self.labels = torch.from_numpy(self.data.labels[self.clip_indices].astype(np.float32))

    @property
    def n_clips(self) -> int:
        return len(self.clip_indices)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        pos, row, start = self.items[j]
        n = self.data.clips[row]["n_samples"]
        chunk = np.zeros(self.chunk_samples, dtype=np.float32)
        piece = self.data.audio[row, start:min(n, start + self.chunk_samples)]
        np.multiply(piece, _FROM_INT16, out=chunk[:len(piece)])
        return torch.from_numpy(chunk), pos


class TripletDataset(Dataset):
    """Tag-based triplets for metric learning (the homework's sampling).

    Each item draws a tag at random (among tags with at least two positive
    clips and one negative), an anchor and a different positive clip that
    carry it, and a negative clip that does not; each is a random crop.
    Returns three float32 ``(chunk_samples,)`` waveforms and the tag index.
    An epoch has as many triplets as the split has clips.
    """

    def __init__(self, data: "TaggedAudio | str | os.PathLike", split: str, chunk_samples: int = 48000) -> None:
        self.crops = RandomCropDataset(data, split, chunk_samples)
        labels = self.crops.data.labels[self.crops.indices].astype(bool)
        self.positives = [np.flatnonzero(labels[:, t]) for t in range(labels.shape[1])]
        self.negatives = [np.flatnonzero(~labels[:, t]) for t in range(labels.shape[1])]
        self.usable_tags = [t for t in range(labels.shape[1])
                            if len(self.positives[t]) >= 2 and len(self.negatives[t]) >= 1]
        if not self.usable_tags:
            raise ValueError("no tag has two positive clips and one negative clip in this split")

    def __len__(self) -> int:
        return len(self.crops)

    def sample_indices(self) -> tuple[int, int, int, int]:
        """Draw one triplet: positions (in the split) of the anchor, the
        positive and the negative clip, and the tag index."""
        tag = self.usable_tags[int(torch.randint(len(self.usable_tags), ()))]
        pos = self.positives[tag]
        a, p = torch.randperm(len(pos))[:2].tolist()
        n = int(self.negatives[tag][int(torch.randint(len(self.negatives[tag]), ()))])
        return int(pos[a]), int(pos[p]), n, tag

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        a, p, n, tag = self.sample_indices()
        return self.crops[a][0], self.crops[p][0], self.crops[n][0], tag


#: Ways to draw triplets: ``tag`` is the homework's (a tag uniformly at random,
#: then two clips with it and one without); ``tag_frequency`` draws the tag in
#: proportion to its number of clips, so frequent tags, which most queries
#: carry, are trained on as often as they are asked about; ``song`` is
#: instance-based at the song level: two clips of one song against a clip of
#: another song, without any tag.
TRIPLET_SAMPLINGS = ("tag", "tag_frequency", "song")


class TagFrequencyTripletDataset(TripletDataset):
    """:class:`helpers.data.TripletDataset` with the tag drawn in
    proportion to its number of positive clips in the split (instead of
    uniformly): ``P(tag) = n_clips(tag) / sum(n_clips)``. Items are the same:
    anchor, positive, negative waveforms ``(chunk_samples,)`` and the tag index.
    """

    def __init__(self, data: "TaggedAudio | str | os.PathLike", split: str, chunk_samples: int = 48000) -> None:
        super().__init__(data, split, chunk_samples)
        self.tag_weights = torch.tensor([float(len(self.positives[t])) for t in self.usable_tags])

    def sample_indices(self) -> tuple[int, int, int, int]:
        tag = self.usable_tags[int(torch.multinomial(self.tag_weights, 1))]
        pos = self.positives[tag]
        a, p = torch.randperm(len(pos))[:2].tolist()
        n = int(self.negatives[tag][int(torch.randint(len(self.negatives[tag]), ()))])
        return int(pos[a]), int(pos[p]), n, tag


def song_of(origin: str) -> str:
    """The song (recording) a clip comes from, read from its ``origin``: an
    MTAT mp3 path without its ``-START-END.mp3`` segment suffix (MTAT cuts
    each track into clips of about 29 s), else the origin itself (the
    synthetic set's ``song0005 (pop)``)."""
    return re.sub(r"-\d+-\d+\.mp3$", "", str(origin))


class SongTripletDataset(TripletDataset):
    """Instance-based triplets at the song level: the anchor and the positive
    are two different clips of the same song (see :func:`song_of`), the
    negative a clip of another song. No tag is used. Items: three float32
    waveforms ``(chunk_samples,)`` and the song's index in the split (the
    triplet's *key*). Only songs with at least two clips in the split give
    anchors.
    """

    def __init__(self, data: "TaggedAudio | str | os.PathLike", split: str, chunk_samples: int = 48000) -> None:
        super().__init__(data, split, chunk_samples)
        songs = [song_of(self.crops.data.clips[int(r)]["origin"]) for r in self.crops.indices]
        index = {name: k for k, name in enumerate(dict.fromkeys(songs))}
        self.song = np.array([index[name] for name in songs], dtype=np.int64)
        self.members = [np.flatnonzero(self.song == k) for k in range(len(index))]
        self.anchors = np.array([i for i, k in enumerate(self.song) if len(self.members[k]) >= 2], dtype=np.int64)
        if len(self.anchors) == 0 or len(self.members) < 2:
            raise ValueError(f"song sampling needs songs with two clips or more in {split!r} and two songs at least")

    def sample_indices(self) -> tuple[int, int, int, int]:
        a = int(self.anchors[int(torch.randint(len(self.anchors), ()))])
        song = int(self.song[a])
        siblings = self.members[song][self.members[song] != a]
        p = int(siblings[int(torch.randint(len(siblings), ()))])
        j = int(torch.randint(len(self.song) - len(self.members[song]), ()))
        n = int(np.flatnonzero(self.song != song)[j])
        return a, p, n, song


def clip_songs(data: TaggedAudio, split: str) -> np.ndarray:
    """The song of every clip of ``split`` (:func:`song_of`), in the split's
    order: the groups of a same-song-masked Recall@K."""
    return np.array([song_of(data.clips[int(r)]["origin"]) for r in data.split_indices(split)])


def positive_counts(data: TaggedAudio, split: str) -> dict[str, tuple[int, int]]:
    """For every tag, how many clips of ``split`` carry it and from how many
    songs: ``{tag: (clips, songs)}``."""
    rows = data.split_indices(split)
    songs = clip_songs(data, split)
    labels = data.labels[rows] > 0
    return {tag: (int(labels[:, t].sum()), len(set(songs[labels[:, t]]))) for t, tag in enumerate(data.tags)}


def songs_with_several_clips(data: TaggedAudio, split: str) -> int:
    """How many songs (see :func:`song_of`) have two clips or more in
    ``split``: song triplets need at least one (and two songs)."""
    songs = [song_of(data.clips[int(r)]["origin"]) for r in data.split_indices(split)]
    counts: dict[str, int] = {}
    for song in songs:
        counts[song] = counts.get(song, 0) + 1
    return sum(1 for n in counts.values() if n >= 2) if len(counts) >= 2 else 0


def example_clips(data: TaggedAudio, wanted: Sequence[str], split: str = "test") -> list[tuple[str, int]]:
    """One clip of ``split`` for each tag of ``wanted``, as ``(tag, row)``
    pairs in order: the first clip that carries the tag. A wanted tag that the
    dataset lacks, or that no clip of the split carries, is replaced by the
    most frequent tag of the split that is neither wanted nor used yet (compare
    the tags returned with ``wanted`` to say so)."""
    rows = data.split_indices(split)
    counts = data.labels[rows].sum(0)
    by_frequency = [data.tags[j] for j in np.argsort(-counts, kind="stable") if counts[j] > 0]
    chosen: list[tuple[str, int]] = []
    for tag in wanted:
        if tag not in by_frequency:
            spare = [t for t in by_frequency if t not in wanted and t not in dict(chosen)]
            if not spare:
                continue
            tag = spare[0]
        j = data.tags.index(tag)
        chosen.append((tag, next(int(r) for r in rows if data.labels[r, j])))
    return chosen


def triplet_dataset(data: TaggedAudio, split: str, chunk_samples: int = 48000,
                    sampling: str = "tag") -> TripletDataset:
    """The triplets of ``split`` drawn with ``sampling`` (see :data:`TRIPLET_SAMPLINGS`)."""
    if sampling == "tag":
        return TripletDataset(data, split, chunk_samples)
    if sampling == "tag_frequency":
        return TagFrequencyTripletDataset(data, split, chunk_samples)
    if sampling == "song":
        return SongTripletDataset(data, split, chunk_samples)
    raise ValueError(f"unknown triplet sampling {sampling!r}: use one of {TRIPLET_SAMPLINGS}")


def describe_splits(data: TaggedAudio) -> dict[str, int]:
    """Clips per split, e.g. ``{'train': 1400, 'valid': 300, 'test': 300}``."""
    return {s: len(data.split_indices(s)) for s in SPLITS}
