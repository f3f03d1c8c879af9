"""The training loop: learning, checkpoints, exact resume, NaN stop,
chunk-averaged prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers.data import ChunkDataset, TaggedAudio
from helpers.models import build_model
from helpers.config import PROFILES, choose_profile
from helpers.train import (HOMEWORK_RECIPE, Recipe, TrainingDivergedError, embed_clips, evaluate, fit, load_checkpoint,
                           predict)

QUICK = Recipe(optimizer="adam", lr=1e-3, epochs=2, batch_size=4, eval_batch_size=8)


def test_homework_recipe_is_the_homeworks():
    r = HOMEWORK_RECIPE
    assert (r.optimizer, r.lr, r.momentum, r.plateau_factor, r.plateau_patience, r.min_lr, r.epochs) == \
        ("sgd", 1e-3, 0.9, 0.2, 5, 1e-5, 10)
    assert r.for_profile("ci").max_batches == PROFILES["ci"]["max_batches"]


def test_profile_choice(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    assert choose_profile() == "ci" and choose_profile("gpu") == "gpu"
    with pytest.raises(ValueError, match="unknown profile"):
        choose_profile("fast")


def test_fit_learns_saves_and_loads_identically(tiny_root, tmp_path):
    data = TaggedAudio(tiny_root)
    model = build_model("cnn1d", n_tags=len(data.tags))
    history = fit(model, data, QUICK, "cnn1d", checkpoint_dir=tmp_path / "ck", progress=False)
    assert history.epoch == [1, 2] and history.train_loss[1] < history.train_loss[0]
    assert all(np.isfinite(history.valid_loss)) and history.train_clips_per_s[0] > 0
    loaded, ckpt = load_checkpoint(tmp_path / "ck" / "best.pt", device="cpu")
    assert ckpt["tags"] == data.tags and ckpt["model_name"] == "cnn1d"
    x = torch.from_numpy(np.stack([data.waveform(0)[:48000], data.waveform(1)[:48000]]))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))          # fit() leaves the best epoch's weights in the model


def test_resume_after_interruption_gives_the_uninterrupted_result(tiny_root, tmp_path):
    data = TaggedAudio(tiny_root)

    def fresh():
        torch.manual_seed(123)
        return build_model("cnn1d", n_tags=len(data.tags))

    full = fit(fresh(), data, QUICK, "cnn1d", checkpoint_dir=tmp_path / "full", progress=False)
    # stop the run in epoch 2, as a person pressing stop, then rerun the same call
    with pytest.raises(KeyboardInterrupt):
        fit(_InterruptAfter(fresh(), tmp_path / "cut"), data, QUICK, "cnn1d", checkpoint_dir=tmp_path / "cut",
            progress=False)
    resumed = fit(fresh(), data, QUICK, "cnn1d", checkpoint_dir=tmp_path / "cut", progress=False)
    assert resumed.epoch == [1, 2]
    assert resumed.train_loss == pytest.approx(full.train_loss, rel=1e-6)
    assert resumed.valid_loss == pytest.approx(full.valid_loss, rel=1e-6)
    with pytest.raises(ValueError, match="another run"):
        fit(build_model("cnn1d", n_tags=len(data.tags)), data, Recipe(epochs=3), "cnn1d",
            checkpoint_dir=tmp_path / "cut", progress=False)


class _InterruptAfter(nn.Module):
    """Wraps a model; raises KeyboardInterrupt in the first training forward
    pass after epoch 1's checkpoint exists (as a person pressing stop)."""

    def __init__(self, model, ckpt_dir):
        super().__init__()
        self.model, self.ckpt_dir = model, ckpt_dir
        self.input_samples = model.input_samples

    def forward(self, x):
        if self.training and (self.ckpt_dir / "last.pt").exists():
            raise KeyboardInterrupt
        return self.model(x)

    def state_dict(self, *a, **kw):
        return self.model.state_dict(*a, **kw)

    def load_state_dict(self, *a, **kw):
        return self.model.load_state_dict(*a, **kw)


def test_nan_loss_stops_with_a_clear_message(tiny_root, tmp_path):
    data = TaggedAudio(tiny_root)

    class Broken(nn.Module):
        input_samples = 16000

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return (x[:, :len(data.tags)] * self.w) * float("nan")

    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        fit(Broken(), data, QUICK, "broken", progress=False)


def test_lr_floor_stops_training(tiny_root):
    data = TaggedAudio(tiny_root)
    h = fit(build_model("cnn1d", n_tags=len(data.tags)), data,
            Recipe(lr=1e-6, min_lr=1e-5, epochs=5, batch_size=4), "cnn1d", progress=False)
    assert h.epoch == [1] and "learning rate below" in h.stopped


def test_predict_averages_every_chunk_of_a_clip(tiny_root):
    data = TaggedAudio(tiny_root)
    torch.manual_seed(0)
    model = build_model("cnn1d", n_tags=len(data.tags)).eval()
    chunks = ChunkDataset(data, "test", 16000)
    out = predict(model, chunks, batch_size=5, device="cpu", progress=False)
    probs = out.values
    assert out.seen.all()
    row = int(chunks.clip_indices[2])
    wave = torch.from_numpy(data.waveform(row))
    with torch.no_grad():
        one_by_one = torch.sigmoid(model(torch.stack([wave[s:s + 16000] for s in (0, 16000, 32000)]))).mean(0)
    assert probs.shape == (chunks.n_clips, len(data.tags))
    assert np.allclose(probs[2], one_by_one.numpy(), atol=1e-6)
    emb = embed_clips(model, chunks, "penultimate", normalize=True, batch_size=5, device="cpu", progress=False).values
    assert emb.shape == (chunks.n_clips, model.embedding_dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    scores, p, y = evaluate(model, data, "test", chunk_samples=16000, device="cpu", progress=False)
    assert np.allclose(p, probs) and y.shape == p.shape and 0 <= scores.roc_auc <= 1


def test_missing_or_bad_checkpoint_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="train a model first"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
