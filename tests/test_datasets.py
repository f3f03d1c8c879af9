"""The on-disk format: writing, resuming, reading, and the torch Datasets."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from helpers.data import (ChunkDataset, DatasetNotReadyError, RandomCropDataset, TaggedAudio, TripletDataset, chunk_starts,
                          example_clips, songs_with_several_clips)
from helpers.prepare.writer import ClipInfo, DatasetWriter

TAGS = ["a", "b", "c"]


def small_writer(root, **kw):
    clips = [ClipInfo(f"c{i}", ["train", "train", "valid", "test", "train"][i], f"song{i // 2}") for i in range(5)]
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]])
    return DatasetWriter(root, "toy", TAGS, 1000, clips, labels, **kw)


def test_write_read_roundtrip_with_short_clip_and_failure(tmp_path):
    w = small_writer(tmp_path / "ds")
    for i in w.pending():
        if i == 4:
            w.fail(i, "unreadable")
        else:
            w.write(i, np.full(1000 if i != 1 else 400, 0.25 * (i + 1), dtype=np.float32))
    meta = w.finalize(extra={"source": "test"})
    assert meta["split_sizes"] == {"train": 2, "valid": 1, "test": 1} and meta["source"] == "test"
    d = TaggedAudio(tmp_path / "ds")
    assert d.audio.dtype == np.int16 and d.audio.shape == (5, 1000)
    assert d.clips[1]["n_samples"] == 400 and len(d.waveform(1)) == 400
    assert np.allclose(d.waveform(0), 0.25, atol=1e-4)
    assert list(d.split_indices("train")) == [0, 1]                     # clip 4 is excluded
    assert d.tags_of(1) == ["a", "b"]
    assert not (tmp_path / "ds" / "progress.npy").exists()


def test_interrupted_write_resumes_and_incomplete_folder_is_not_a_dataset(tmp_path):
    w = small_writer(tmp_path / "ds")
    w.write(0, np.ones(1000, dtype=np.float32) * 0.5)
    w.write(1, np.ones(1000, dtype=np.float32) * 0.5)
    w.checkpoint()
    w.write(2, np.ones(1000, dtype=np.float32) * 0.5)                   # written but never checkpointed
    del w
    with pytest.raises(DatasetNotReadyError, match="prepare"):
        TaggedAudio(tmp_path / "ds")
    w2 = small_writer(tmp_path / "ds")
    assert w2.pending() == [2, 3, 4] and w2.resumed_clips == 2
    for i in w2.pending():
        w2.write(i, np.ones(1000, dtype=np.float32) * 0.5)
    w2.finalize()
    assert len(TaggedAudio(tmp_path / "ds")) == 5
    with pytest.raises(FileExistsError):
        small_writer(tmp_path / "ds")


def test_stale_format_version_is_reported(tmp_path):
    w = small_writer(tmp_path / "ds")
    for i in w.pending():
        w.write(i, np.zeros(1000, dtype=np.float32))
    w.finalize()
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    meta["format_version"] = 0
    (tmp_path / "ds" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetNotReadyError, match="format version 0"):
        TaggedAudio(tmp_path / "ds")
    with pytest.raises(DatasetNotReadyError, match="does not exist"):
        TaggedAudio(tmp_path / "nowhere")


def test_random_crops_come_from_the_clip(tiny_root):
    d = TaggedAudio(tiny_root)
    ds = RandomCropDataset(d, "train", 16000)
    torch.manual_seed(0)
    x, y = ds[0]
    row = int(ds.indices[0])
    full = d.waveform(row)
    assert x.shape == (16000,) and y.shape == (len(d.tags),)
    starts = [s for s in range(len(full) - 16000 + 1) if np.array_equal(full[s:s + 16000], x.numpy())]
    assert starts, "the crop is not a contiguous piece of its clip"
    assert torch.equal(y, torch.from_numpy(d.labels[row].astype(np.float32)))


def test_chunks_cover_every_clip_and_pad_short_ones(tiny_root):
    d = TaggedAudio(tiny_root)
    ds = ChunkDataset(d, "test", 16000)
    n_per_clip = len(chunk_starts(d.clips[int(ds.clip_indices[0])]["n_samples"], 16000))
    assert n_per_clip == 4 and len(ds) == 4 * ds.n_clips                  # 3.5 s clips: 3 chunks of 1 s + the end
    x, pos = ds[5]
    assert pos == 1 and torch.equal(x, torch.from_numpy(d.waveform(int(ds.clip_indices[1]))[16000:32000]))
    x, pos = ds[7]                                                         # the last chunk ends with the clip
    assert pos == 1 and torch.equal(x, torch.from_numpy(d.waveform(int(ds.clip_indices[1]))[-16000:]))
    assert chunk_starts(56000, 16000) == [0, 16000, 32000, 40000] and chunk_starts(48000, 16000) == [0, 16000, 32000]
    assert chunk_starts(96000, 59049) == [0, 36951]                        # a 6 s clip in 3.69 s chunks: all of it
    long = ChunkDataset(d, "test", 80000)                                  # longer than a clip: one padded chunk
    x, _ = long[0]
    assert len(long) == long.n_clips and x.shape == (80000,) and torch.all(x[56000:] == 0)


def test_triplets_share_a_tag_and_the_negative_lacks_it(tiny_root):
    d = TaggedAudio(tiny_root)
    ds = TripletDataset(d, "train", 8000)
    assert len(ds) == len(d.split_indices("train"))
    torch.manual_seed(3)
    labels = d.labels[ds.crops.indices]
    for _ in range(200):
        a, p, n, tag = ds.sample_indices()
        assert a != p and labels[a, tag] == 1 and labels[p, tag] == 1 and labels[n, tag] == 0
    xa, xp, xn, tag = ds[0]
    assert xa.shape == xp.shape == xn.shape == (8000,) and tag in ds.usable_tags


def test_pickling_sends_no_audio_and_the_copy_reads_the_same_waveforms(tiny_root):
    """What a spawn/forkserver DataLoader worker receives: everything but the
    memory map, which the copy opens again."""
    d = TaggedAudio(tiny_root)
    audio_bytes = (tiny_root / "audio.npy").stat().st_size
    for obj in (d, RandomCropDataset(d, "train", 16000)):
        blob = pickle.dumps(obj)
        assert len(blob) < 0.1 * audio_bytes, (len(blob), audio_bytes)
        assert b"memmap" not in blob
    assert isinstance(d.audio, np.memmap)                                # pickling left the original whole
    copy = pickle.loads(pickle.dumps(d))
    assert isinstance(copy.audio, np.memmap) and copy.audio.filename == d.audio.filename
    assert copy.tags == d.tags and np.array_equal(copy.labels, d.labels) and copy.clips == d.clips
    for i in range(len(d)):
        assert np.array_equal(copy.waveform(i), d.waveform(i))
    crops = pickle.loads(pickle.dumps(RandomCropDataset(d, "train", 16000)))
    assert isinstance(crops.data.audio, np.memmap)
    torch.manual_seed(5)
    a = crops[3]
    torch.manual_seed(5)
    b = RandomCropDataset(d, "train", 16000)[3]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_spawned_dataloader_worker_reads_batches(tiny_root):
    d = TaggedAudio(tiny_root)
    ds = RandomCropDataset(d, "train", 8000)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    x, y = next(iter(loader))
    assert x.shape == (2, 8000) and x.abs().sum() > 0
    assert torch.equal(y, torch.from_numpy(d.labels[ds.indices[:2]].astype(np.float32)))
    for k in range(2):                                                   # each crop is a piece of its clip
        full = d.waveform(int(ds.indices[k]))
        assert any(np.array_equal(full[s:s + 8000], x[k].numpy()) for s in range(len(full) - 8000 + 1))


@pytest.mark.parametrize("make", [RandomCropDataset, ChunkDataset], ids=["random-crops", "chunks"])
def test_a_split_without_clips_is_a_clear_error(tmp_path, make):
    root = tmp_path / "ds"
    clips = [ClipInfo(f"c{i}", "train" if i < 3 else "test", f"song{i}") for i in range(4)]   # no 'valid' clip
    w = DatasetWriter(root, "toy", TAGS, 1000, clips, np.eye(4, 3, dtype=np.uint8))
    for i in w.pending():
        w.write(i, np.full(1000, 0.1, dtype=np.float32))
    w.finalize()
    with pytest.raises(ValueError, match="the 'valid' split of the dataset at .* has no clips"):
        make(TaggedAudio(root), "valid", 500)
    assert len(make(TaggedAudio(root), "test", 500)) >= 1                # a split with one clip is fine


def _toy(root):
    w = small_writer(root)
    for i in w.pending():
        w.write(i, np.full(1000, 0.01 * (i + 1), dtype=np.float32))
    w.finalize()
    return TaggedAudio(root)


def test_example_clips_replace_a_tag_the_split_lacks_and_say_which(tmp_path):
    d = _toy(tmp_path / "ds")                 # train clips 0, 1, 4: a on 0 and 1, b on 1, c on 4
    assert example_clips(d, ["b", "a"], "train") == [("b", 1), ("a", 0)]
    # "rock" is no tag of the dataset and no valid clip carries "a": the most frequent spare tags stand in
    assert example_clips(d, ["rock", "a"], "valid") == [("b", 2), ("c", 2)]
    assert example_clips(d, ["a", "b", "c", "rock"], "test") == [("a", 3), ("c", 3)]   # nothing left for b, rock


def test_songs_with_several_clips_counts_what_song_triplets_need(tmp_path):
    d = _toy(tmp_path / "ds")                 # songs: clips 0-1 song0, 2-3 song1, 4 song2
    assert songs_with_several_clips(d, "train") == 1          # song0 (clips 0, 1); song2 has one train clip
    assert songs_with_several_clips(d, "valid") == 0          # one song only
