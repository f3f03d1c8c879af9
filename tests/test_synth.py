"""The synthetic dataset: determinism, splits, tag statistics, resumable and
atomic preparation, and a dataset that is learnable but not trivial."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.prepare import synth
from helpers.config import data_root
from helpers.data import DatasetNotReadyError, TaggedAudio
from helpers.prepare.synth import SynthConfig, plan_dataset, prepare_synthetic

SMALL = SynthConfig(n_songs=10, clips_per_song=2, clip_seconds=2.0, seed=7)
REPO = Path(__file__).resolve().parent.parent


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for name in ("audio.npy", "labels.npy", "clips.csv"):
        h.update((root / name).read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = prepare_synthetic(tmp_path / "a", SMALL, workers=1, progress=False)
    b = prepare_synthetic(tmp_path / "b", SMALL, workers=2, progress=False)
    assert digest(a) == digest(b)
    c = prepare_synthetic(tmp_path / "c", SynthConfig(n_songs=10, clips_per_song=2, clip_seconds=2.0, seed=8),
                          workers=1, progress=False)
    assert digest(a) != digest(c)


def test_songs_never_cross_splits_and_default_split_sizes():
    _, clips, splits, _ = plan_dataset(SynthConfig())
    split_of_song = {}
    for c, s in zip(clips, splits):
        assert split_of_song.setdefault(c.song, s) == s
    assert {s: splits.count(s) for s in ("train", "valid", "test")} == {"train": 1400, "valid": 300, "test": 300}


def test_default_tags_are_varied_and_imbalanced_like_mtat():
    _, _, _, labels = plan_dataset(SynthConfig())
    freq = dict(zip(synth.TAGS, labels.mean(0)))
    assert len(synth.TAGS) >= 20
    for family in (("guitar", "piano", "strings", "flute", "synth", "sitar", "drums", "vocal"),   # timbre
                   ("fast", "slow", "beat"), ("loud", "quiet"), ("classical", "rock", "techno", "ambient")):
        assert set(family) <= set(synth.TAGS)
    assert 0.30 <= max(freq.values()) <= 0.40
    assert 0.03 <= min(freq.values()) <= 0.05
    assert list(synth.TAGS) == sorted(synth.TAGS, key=lambda t: -freq[t])     # most frequent first


def test_weak_labels_drop_true_tags():
    strong = plan_dataset(SynthConfig(weak_label_rate=0.0))[3]
    weak = plan_dataset(SynthConfig(weak_label_rate=0.15))[3]
    assert np.all(weak <= strong)
    assert 0.12 < 1 - weak.sum() / strong.sum() < 0.18


def test_rendered_clip_is_bounded_at_its_planned_level():
    songs, clips, _, _ = plan_dataset(SMALL)
    y = synth.render_clip(SMALL.seed, songs[clips[0].song], clips[0], 2.0)
    assert y.shape == (32000,) and y.dtype == np.float32 and np.abs(y).max() < 1
    assert 20 * np.log10(np.sqrt(np.mean(y ** 2))) == pytest.approx(clips[0].level_db, abs=1.5)


def test_interrupted_preparation_resumes_to_identical_bytes(tmp_path, monkeypatch):
    reference = prepare_synthetic(tmp_path / "ref", SMALL, workers=1, progress=False)
    original = synth._render_batch
    calls = {"n": 0}

    def failing(args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(args)

    monkeypatch.setattr(synth, "_render_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(tmp_path / "run", SMALL, workers=1, progress=False)
    with pytest.raises(DatasetNotReadyError, match="incomplete"):
        TaggedAudio(tmp_path / "run")
    monkeypatch.setattr(synth, "_render_batch", original)
    prepare_synthetic(tmp_path / "run", SMALL, workers=1, progress=False)
    assert digest(tmp_path / "run") == digest(reference)


def test_killed_preparation_never_looks_complete_and_finishes_on_rerun(tmp_path):
    cfg = "SynthConfig(n_songs=12, clips_per_song=4, clip_seconds=3.0, seed=3)"
    code = (f"from helpers.prepare.synth import *; prepare_synthetic({str(tmp_path / 'ds')!r}, {cfg}, workers=1, "
            f"progress=False)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for delay in (1.0, 1.6):                       # kill twice, at different moments
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (tmp_path / "ds" / "meta.json").exists():
            break                                   # it finished before the kill: still a valid outcome
        with pytest.raises(DatasetNotReadyError):
            TaggedAudio(tmp_path / "ds")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    reference = prepare_synthetic(tmp_path / "ref", eval(cfg, vars(synth)), workers=1, progress=False)
    assert digest(tmp_path / "ds") == digest(reference)


def test_default_dataset_is_learnable_but_not_trivial():
    """A linear probe on per-clip mean and std of the log-mel bands must land
    clearly between chance and perfect (macro ROC-AUC on the test split)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from helpers.audio import LogMelSpectrogram
    from helpers.metrics import tagging_scores

    root = data_root("synthetic")
    if not (root / "meta.json").exists():
        pytest.fail(f"the default synthetic dataset is missing at {root}: run `make data` first")
    d = TaggedAudio(root)
    front_end = LogMelSpectrogram()

    def features(rows):
        out = []
        for b in range(0, len(rows), 100):
            x = torch.from_numpy(np.stack([d.waveform(int(i)) for i in rows[b:b + 100]]))
            with torch.no_grad():
                m = front_end(x)[:, 0]
            out.append(torch.cat([m.mean(-1), m.std(-1)], 1).numpy())
        return np.concatenate(out)

    train, test = d.split_indices("train"), d.split_indices("test")
    scaler = StandardScaler().fit(xtr := features(train))
    xte = scaler.transform(features(test))
    scores = np.stack([LogisticRegression(max_iter=2000).fit(scaler.transform(xtr), d.labels[train, j])
                       .predict_proba(xte)[:, 1] for j in range(len(d.tags))], 1)
    auc = tagging_scores(d.labels[test], scores, d.tags).roc_auc
    assert 0.65 < auc < 0.90, auc
