"""The synthetic dataset: determinism, splits, tag statistics, resumable and
atomic preparation, and a dataset that is learnable but not trivial."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.course.setup import open_dataset
from helpers.data import DatasetNotReadyError, TaggedAudio
from helpers.prepare import synth
from helpers.prepare.synth import GENERATOR_VERSION, SynthConfig, plan_dataset, prepare_synthetic

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


KILLABLE = SynthConfig(n_songs=12, clips_per_song=4, clip_seconds=1.0, seed=3)     # 48 clips: 3 batches of 16

# Runs prepare_synthetic(root, KILLABLE) and SIGKILLs its own process from the on_batch hook (in the main
# process, right after a batch is durable) once `kill_at` clips are written (0: never).
KILL_CODE = """
import os, signal, sys
from helpers.prepare.synth import SynthConfig, prepare_synthetic
root, kill_at = sys.argv[1], int(sys.argv[2])
def hook(clips_written):
    if clips_written == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
prepare_synthetic(root, SynthConfig(n_songs=12, clips_per_song=4, clip_seconds=1.0, seed=3), workers=1,
                  progress=False, on_batch=hook)
"""


def _clips_durable(root: Path) -> int:
    return int(np.load(root / "progress.npy")[0].sum())


def test_killed_preparation_never_looks_complete_and_finishes_on_rerun(tmp_path):
    """SIGKILL (no cleanup, no finally) after the first batch, then again
    after one more batch of the resumed run: each time the folder is not a
    dataset and keeps exactly the batches made durable; a third run finishes
    with the bytes of an uninterrupted preparation."""
    ds = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(kill_at: int) -> int:
        return subprocess.run([sys.executable, "-c", KILL_CODE, str(ds), str(kill_at)], env=env,
                              timeout=120).returncode

    for durable in (16, 32):                     # killed once per run, each run one batch further
        assert run(kill_at=durable) == -signal.SIGKILL
        assert not (ds / "meta.json").exists()
        with pytest.raises(DatasetNotReadyError, match="incomplete"):
            TaggedAudio(ds)
        assert _clips_durable(ds) == durable
    assert run(kill_at=0) == 0
    reference = prepare_synthetic(tmp_path / "ref", KILLABLE, workers=1, progress=False)
    assert digest(ds) == digest(reference)
    assert TaggedAudio(ds).meta["generator_version"] == GENERATOR_VERSION


@pytest.mark.parametrize("progress", [True, False])
def test_on_batch_reports_durable_clips(tmp_path, progress):
    """on_batch(clips_written) is called after each batch of 16 clips, with
    the number of clips written so far, all of them already durable."""
    cfg = SynthConfig(n_songs=10, clips_per_song=4, clip_seconds=0.5, seed=4)          # 40 clips: 16, 32, 40
    seen = []

    def hook(clips_written):
        seen.append((clips_written, _clips_durable(tmp_path / "ds")))

    prepare_synthetic(tmp_path / "ds", cfg, workers=1, progress=progress, on_batch=hook)
    assert seen == [(16, 16), (32, 32), (40, 40)]


def test_default_dataset_is_learnable_but_not_trivial(default_synthetic):
    """A linear probe on per-clip mean and std of the log-mel bands must land
    clearly between chance and perfect (macro ROC-AUC on the test split)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from helpers.audio import LogMelSpectrogram
    from helpers.metrics import tagging_scores

    d = default_synthetic
    assert d.meta["generator_version"] == GENERATOR_VERSION and d.meta["config"]["n_songs"] == SynthConfig().n_songs
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


# ----------------------------------------------------------------------------
# The generator's version: a fingerprint of its output, and stale datasets
# ----------------------------------------------------------------------------

#: The version whose output FINGERPRINT records.
FINGERPRINT_VERSION = 2

#: Clips of the default dataset (SynthConfig()) that together play every instrument, rendered at the
#: course's 6 s: row -> (RMS, peak, mean |difference| of successive samples, spectral centroid in Hz,
#: tags after the weak-label dropout). Recorded with GENERATOR_VERSION 2.
FINGERPRINT = {
    0: (0.0478, 0.2427, 0.01185, 317.0, ["drums", "beat", "bass", "guitar", "strings", "rock", "male"]),
    16: (0.0616, 0.2531, 0.02521, 973.4, ["happy", "fast", "classical", "quiet", "strings", "violin"]),
    24: (0.0627, 0.7188, 0.05192, 4930.8, ["drums", "electronic", "fast"]),
    124: (0.2147, 0.7558, 0.09412, 1285.3, ["bass", "guitar", "loud", "piano", "vocal", "pop", "male"]),
    132: (0.0368, 0.1607, 0.01290, 1072.8, ["happy", "vocal", "quiet", "indian", "choir"]),
    220: (0.0778, 0.4280, 0.01225, 280.1, ["drums", "flute", "indian", "sitar"]),
    288: (0.2033, 0.7758, 0.15788, 2614.9, ["drums", "beat", "electronic", "synth", "female"]),
}
CHANGED = ("the generator's output changed: bump GENERATOR_VERSION in helpers/prepare/synth.py and update this "
           "fingerprint")


def _fingerprint(y: np.ndarray) -> tuple[float, float, float, float]:
    y = y.astype(np.float64)
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / synth.SAMPLE_RATE)
    return (float(np.sqrt(np.mean(y ** 2))), float(np.abs(y).max()), float(np.mean(np.abs(np.diff(y)))),
            float((power * freqs).sum() / power.sum()))


def test_generator_output_matches_the_fingerprint_of_its_version():
    assert GENERATOR_VERSION == FINGERPRINT_VERSION, (
        f"GENERATOR_VERSION is {GENERATOR_VERSION} but this fingerprint records version {FINGERPRINT_VERSION}: "
        f"record the fingerprint of the new version's output here (and set FINGERPRINT_VERSION)")
    cfg = SynthConfig()
    songs, clips, _, labels = plan_dataset(cfg)
    got, expected = {}, {}
    for row, (rms, peak, roughness, centroid, tags) in FINGERPRINT.items():
        clip = clips[row]
        y = synth.render_clip(cfg.seed, songs[clip.song], clip, cfg.clip_seconds)
        got[row] = (*_fingerprint(y), [synth.TAGS[j] for j in np.flatnonzero(labels[row])])
        expected[row] = (pytest.approx(rms, abs=1e-4), pytest.approx(peak, abs=1e-4),
                         pytest.approx(roughness, abs=2e-5), pytest.approx(centroid, abs=1.0), tags)
    assert got == expected, f"{CHANGED}; now: " + repr({r: (round(a, 4), round(b, 4), round(c, 5), round(d, 1), t)
                                                         for r, (a, b, c, d, t) in got.items()})


STALE = SynthConfig(n_songs=4, clips_per_song=2, clip_seconds=1.0, seed=5)    # 8 clips: one batch


def _make_stale(root: Path, version: int | None) -> None:
    """Mark a finished dataset as made by generator ``version`` (None: no
    version recorded, as before versions existed) and change its audio, so
    that only a real regeneration gives the right bytes back."""
    meta = json.loads((root / "meta.json").read_text())
    if version is None:
        del meta["generator_version"]
    else:
        meta["generator_version"] = version
    (root / "meta.json").write_text(json.dumps(meta))
    audio = np.load(root / "audio.npy", mmap_mode="r+")
    audio[:, :100] = 1234
    audio.flush()
    del audio


def test_a_dataset_of_another_generator_version_is_made_again(tmp_path, capsys):
    reference = digest(prepare_synthetic(tmp_path / "ref", STALE, workers=1, progress=False))
    root = prepare_synthetic(tmp_path / "ds", STALE, workers=1, progress=False)
    assert json.loads((root / "meta.json").read_text())["generator_version"] == GENERATOR_VERSION == 2
    mtime = (root / "audio.npy").stat().st_mtime_ns
    capsys.readouterr()
    prepare_synthetic(root, STALE, workers=1, progress=False)              # current: left as it is
    assert capsys.readouterr().out == "" and (root / "audio.npy").stat().st_mtime_ns == mtime

    _make_stale(root, version=1)
    assert digest(root) != reference
    prepare_synthetic(root, STALE, workers=1, progress=False)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "generator version 1" in out and "version 2" in out, out
    assert digest(root) == reference
    assert TaggedAudio(root).meta["generator_version"] == GENERATOR_VERSION


@pytest.mark.parametrize("version", [1, None], ids=["version-1", "no-version"])
def test_open_dataset_makes_a_stale_synthetic_set_again(tmp_path, capsys, version):
    """open_dataset regenerates a stale set with the configuration its
    meta.json records (not the default one)."""
    reference = digest(prepare_synthetic(tmp_path / "ref", STALE, workers=1, progress=False))
    root = prepare_synthetic(tmp_path / "ds", STALE, workers=1, progress=False)
    _make_stale(root, version)
    data = open_dataset("synthetic", root, progress=False)
    assert "generator version 1" in capsys.readouterr().out
    assert isinstance(data, TaggedAudio) and len(data) == STALE.n_clips
    assert data.meta["generator_version"] == GENERATOR_VERSION
    assert digest(root) == reference
    assert np.array_equal(data.waveform(0), TaggedAudio(tmp_path / "ref").waveform(0))


def test_an_interrupted_preparation_of_another_generator_version_starts_over(tmp_path, monkeypatch):
    """A folder left half-written by another generator version is not resumed
    (that would mix two generators' clips in one dataset): it starts over."""
    written = []

    def stop_after_first_batch(clips_written):
        written.append(clips_written)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(tmp_path / "ds", KILLABLE, workers=1, progress=False, on_batch=stop_after_first_batch)
    monkeypatch.setattr(synth, "GENERATOR_VERSION", GENERATOR_VERSION + 1)
    prepare_synthetic(tmp_path / "ds", KILLABLE, workers=1, progress=False, on_batch=written.append)
    assert written == [16, 16, 32, 48]              # the second run began at clip 0, not at clip 16
    assert TaggedAudio(tmp_path / "ds").meta["generator_version"] == GENERATOR_VERSION + 1
    written.clear()
    monkeypatch.setattr(synth, "GENERATOR_VERSION", GENERATOR_VERSION)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(tmp_path / "again", KILLABLE, workers=1, progress=False, on_batch=stop_after_first_batch)
    prepare_synthetic(tmp_path / "again", KILLABLE, workers=1, progress=False, on_batch=written.append)
    assert written == [16, 32, 48]                  # the same version resumes after the first batch
