"""The training loop: learning, checkpoints, exact resume, NaN stop,
chunk-averaged prediction."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import train
from helpers.config import PROFILES, choose_profile, usable_cpus
from helpers.data import ChunkDataset, RandomCropDataset, TaggedAudio
from helpers.models import build_model
from helpers.prepare.synth import prepare_synthetic
from conftest import TINY
from helpers.train import (CHECKPOINT_FORMAT, HOMEWORK_RECIPE, Recipe, TrainingDivergedError, embed_clips, evaluate,
                           fit, load_checkpoint, model_checkpoint, predict, save_checkpoint)

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
        last = self.ckpt_dir / "last.pt"
        if self.training and last.exists() and torch.load(last, weights_only=True)["epoch"] >= 1:
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
        starts = (0, 16000, 32000, len(wave) - 16000)                     # 3.5 s: three chunks and the end
        one_by_one = torch.sigmoid(model(torch.stack([wave[s:s + 16000] for s in starts]))).mean(0)
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


def _fresh(data):
    torch.manual_seed(123)
    return build_model("cnn1d", n_tags=len(data.tags))


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _last_weights(folder: Path) -> dict:
    return torch.load(folder / "last.pt", map_location="cpu", weights_only=True)["state_dict"]


def test_resume_with_dataloader_workers_gives_the_uninterrupted_result(tiny_root, tmp_path):
    """With num_workers=2 the crops are drawn in the workers, seeded from the
    loader's generator: a resumed run must restore it to crop the same."""
    data = TaggedAudio(tiny_root)
    recipe = replace(QUICK, num_workers=2, max_batches=3)              # 3 of the 5 batches: quicker, as exact
    full_model = _fresh(data)
    full = fit(full_model, data, recipe, "cnn1d", checkpoint_dir=tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(_InterruptAfter(_fresh(data), tmp_path / "cut"), data, recipe, "cnn1d", checkpoint_dir=tmp_path / "cut",
            progress=False)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    resumed_model = _fresh(data)
    resumed = fit(resumed_model, data, recipe, "cnn1d", checkpoint_dir=tmp_path / "cut", progress=False)
    assert resumed.epoch == full.epoch == [1, 2]
    assert resumed.train_loss == pytest.approx(full.train_loss, rel=1e-6)
    assert resumed.valid_loss == pytest.approx(full.valid_loss, rel=1e-6)
    assert _same_weights(resumed_model.state_dict(), full_model.state_dict())          # the best epoch's
    assert _same_weights(_last_weights(tmp_path / "cut"), _last_weights(tmp_path / "full"))   # epoch 2's


def test_more_epochs_extend_a_finished_run(tiny_root, tmp_path):
    """A finished 1-epoch run called again with epochs=2 (and the same
    checkpoint_dir) continues into epoch 2: the result of a straight 2-epoch
    run, not an "another run" error nor a run started over."""
    data = TaggedAudio(tiny_root)
    recipe = replace(QUICK, max_batches=3)                              # epochs=2
    straight_model = _fresh(data)
    straight = fit(straight_model, data, recipe, "cnn1d", checkpoint_dir=tmp_path / "straight", progress=False)
    one = fit(_fresh(data), data, replace(recipe, epochs=1), "cnn1d", checkpoint_dir=tmp_path / "run", progress=False)
    assert one.epoch == [1]
    extended_model = _fresh(data)
    extended = fit(extended_model, data, recipe, "cnn1d", checkpoint_dir=tmp_path / "run", progress=False)
    assert extended.epoch == straight.epoch == [1, 2]
    assert extended.train_loss == pytest.approx(straight.train_loss, rel=1e-6)
    assert extended.valid_loss == pytest.approx(straight.valid_loss, rel=1e-6)
    assert _same_weights(extended_model.state_dict(), straight_model.state_dict())
    assert _same_weights(_last_weights(tmp_path / "run"), _last_weights(tmp_path / "straight"))
    # the same call again trains nothing (a training forward would raise) and returns the same record
    again = fit(_InterruptAfter(_fresh(data), tmp_path / "run"), data, recipe, "cnn1d",
                checkpoint_dir=tmp_path / "run", progress=False)
    assert again.epoch == [1, 2] and again.train_loss == extended.train_loss


def test_save_checkpoint_stores_numpy_paths_and_dataclasses_as_plain_values(tmp_path):
    payload = {"lr": np.float32(0.5), "epoch": np.int64(3), "counts": np.array([1, 2]), "where": Path("/a/b.pt"),
               "nested": {"loss": np.float32(0.25), "files": [Path("x.wav"), np.int32(7)], "shape": (np.int64(2), 3)},
               "recipe": Recipe(epochs=4), "weights": torch.ones(2)}
    save_checkpoint(tmp_path / "c.pt", payload)
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert back["lr"] == 0.5 and type(back["lr"]) is float
    assert back["epoch"] == 3 and type(back["epoch"]) is int
    assert back["counts"] == [1, 2] and all(type(v) is int for v in back["counts"])
    assert back["where"] == str(Path("/a/b.pt"))
    assert back["nested"] == {"loss": 0.25, "files": ["x.wav", 7], "shape": (2, 3)}
    assert type(back["nested"]["files"][1]) is int and type(back["nested"]["shape"][0]) is int
    assert back["recipe"] == {**vars(Recipe(epochs=4))} and back["recipe"]["epochs"] == 4
    assert torch.equal(back["weights"], torch.ones(2))
    assert isinstance(payload["lr"], np.float32)                         # the caller's payload is left as it was
    with pytest.raises(TypeError, match=r"checkpoint\['nested'\]\['odd'\] holds a object"):
        save_checkpoint(tmp_path / "bad.pt", {"fine": 1, "nested": {"odd": object()}})
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.parametrize("value, plain", [(np.float64(0.25), 0.25), (np.str_("rock"), "rock")],
                         ids=["float64", "str_"])
def test_save_checkpoint_converts_numpy_subclasses_of_python_types(tmp_path, value, plain):
    save_checkpoint(tmp_path / "c.pt", {"value": value, "scores": {"roc_auc": value}})
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert back == {"value": plain, "scores": {"roc_auc": plain}} and type(back["value"]) is type(plain)


def test_load_checkpoint_reads_formats_1_and_2_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn1d", n_tags=3)
    x = torch.randn(2, 48000)
    with torch.no_grad():
        expected = model.eval()(x)
    assert CHECKPOINT_FORMAT == 2
    for version in (1, 2):
        save_checkpoint(tmp_path / f"v{version}.pt", {**model_checkpoint(model, "cnn1d", ["a", "b", "c"]),
                                                       "format": version})
        loaded, ckpt = load_checkpoint(tmp_path / f"v{version}.pt", device="cpu")
        assert ckpt["format"] == version
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)
    save_checkpoint(tmp_path / "v99.pt", {**model_checkpoint(model, "cnn1d", ["a", "b", "c"]), "format": 99})
    with pytest.raises(ValueError, match="format 99"):
        load_checkpoint(tmp_path / "v99.pt", device="cpu")


def test_max_batches_fetches_exactly_that_many_training_batches(tiny_root, monkeypatch):
    data = TaggedAudio(tiny_root)
    fetched = {"n": 0}
    at_validation = []
    forwards = []

    class CountingCrops(RandomCropDataset):
        def __getitem__(self, i):
            fetched["n"] += 1
            return super().__getitem__(i)

    class Spy(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.input_samples = model, model.input_samples

        def forward(self, x):
            if self.training:
                forwards.append(len(x))
            else:
                at_validation.append(fetched["n"])
            return self.model(x)

    monkeypatch.setattr(train, "RandomCropDataset", CountingCrops)
    recipe = replace(QUICK, max_batches=2, epochs=2, num_workers=0)
    assert len(RandomCropDataset(data, "train")) >= 3 * recipe.batch_size     # more batches than max_batches
    history = fit(Spy(_fresh(data)), data, recipe, "cnn1d", progress=False)
    assert history.epoch == [1, 2]
    assert forwards == [4, 4, 4, 4]                                     # 2 batches of 4 per epoch
    assert fetched["n"] == 16                                           # and not one item more
    # validation runs after each epoch's 8 items and reads no training item
    assert at_validation and sorted(set(at_validation)) == [8, 16]
    assert at_validation == sorted(at_validation)


def test_a_training_split_smaller_than_a_batch_trains_on_one_batch_of_all_of_it(tiny_root, tmp_path):
    """A tiny dataset (a reduced MTAT) must still run: one smaller batch per
    epoch; a split of one clip is an error that says why."""
    data = TaggedAudio(tiny_root)
    n_train = len(data.split_indices("train"))
    history = fit(_fresh(data), data, replace(QUICK, batch_size=64, epochs=1), "cnn1d", progress=False)
    assert history.epoch == [1] and np.isfinite(history.train_loss[0])
    one = RandomCropDataset(data, "train", 16000)
    one.indices = one.indices[:1]
    with pytest.raises(ValueError, match="has 1 item"):
        train.training_loader(one, QUICK, torch.Generator(), torch.device("cpu"))
    assert n_train < 64


def test_numpy_keys_are_converted_so_the_checkpoint_loads(tmp_path):
    save_checkpoint(tmp_path / "k.pt", {"per_tag": {np.str_("rock"): 0.5}, "by_index": {np.int64(3): "x"}})
    loaded = torch.load(tmp_path / "k.pt", weights_only=True)
    assert loaded == {"per_tag": {"rock": 0.5}, "by_index": {3: "x"}}
    assert type(next(iter(loaded["by_index"]))) is int


def test_max_batches_below_one_is_a_clear_error(tiny_root):
    data = TaggedAudio(tiny_root)
    with pytest.raises(ValueError, match="max_batches must be at least 1"):
        fit(build_model("cnn1d", n_tags=len(data.tags)), data, replace(QUICK, max_batches=0), "cnn1d",
            progress=False)


def test_another_worker_count_is_another_run(tiny_root, tmp_path):
    """Crops draw from the main process's random stream without workers and
    from the workers' with them: resuming with another worker count would
    match neither run, so it is refused."""
    data = TaggedAudio(tiny_root)
    one_epoch = replace(QUICK, epochs=1, max_batches=2)
    fit(build_model("cnn1d", n_tags=len(data.tags)), data, one_epoch, "cnn1d", checkpoint_dir=tmp_path / "ck",
        progress=False)
    with pytest.raises(ValueError, match="another run"):
        fit(build_model("cnn1d", n_tags=len(data.tags)), data, replace(one_epoch, epochs=2, num_workers=1), "cnn1d",
            checkpoint_dir=tmp_path / "ck", progress=False)


def test_the_gpu_profile_asks_for_no_more_workers_than_cpus():
    """PyTorch warns when a DataLoader has more workers than the CPUs it may
    use (Colab's GPU runtimes have 2)."""
    from helpers.config import usable_cpus

    assert 1 <= PROFILES["gpu"]["num_workers"] == min(4, usable_cpus())
    assert Recipe().for_profile("gpu").num_workers == PROFILES["gpu"]["num_workers"]


class _InterruptInEpoch1(_InterruptAfter):
    """Wraps a model; raises KeyboardInterrupt in the third training forward
    pass of epoch 1, after two optimiser steps changed the weights in memory."""

    def __init__(self, model):
        super().__init__(model, ckpt_dir=None)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
        return self.model(x)


def test_runs_dir_finds_the_same_run_again_and_a_changed_one_gets_its_own(tiny_root, tmp_path, capsys):
    data = TaggedAudio(tiny_root)
    recipe = replace(QUICK, max_batches=3)
    full_model = _fresh(data)
    fit(full_model, data, recipe, "cnn1d", checkpoint_dir=tmp_path / "full", progress=False)
    # interrupted in epoch 1, before any epoch finished: the weights in memory have moved, the rerun (the same
    # cell run again, with that model) starts from the saved initial weights and ends as the uninterrupted run
    wrapped = _InterruptInEpoch1(_fresh(data))
    with pytest.raises(KeyboardInterrupt):
        fit(wrapped, data, recipe, "cnn1d", runs_dir=tmp_path / "runs", progress=False)
    assert not _same_weights(wrapped.model.state_dict(), _fresh(data).state_dict())
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("cnn1d-") and torch.load(run / "last.pt", weights_only=True)["epoch"] == 0
    resumed = fit(wrapped.model, data, recipe, "cnn1d", runs_dir=tmp_path / "runs", progress=False)
    assert "cnn1d: resuming the run cnn1d-" in capsys.readouterr().out and resumed.epoch == [1, 2]
    assert _same_weights(wrapped.model.state_dict(), full_model.state_dict())
    # run again when finished: loaded, not trained (a training forward would raise), and it says so
    again_model = _InterruptAfter(_fresh(data), run)
    again = fit(again_model, data, recipe, "cnn1d", runs_dir=tmp_path / "runs", progress=False)
    assert again.train_loss == resumed.train_loss and "has finished (2 epochs" in capsys.readouterr().out
    assert _same_weights(again_model.state_dict(), full_model.state_dict())
    # a changed call (options, recipe, another dataset) is another run, in its own folder
    fit(_fresh(data), data, replace(recipe, lr=3e-3, epochs=1), "cnn1d", runs_dir=tmp_path / "runs", progress=False)
    fit(_fresh(data), data, replace(recipe, epochs=1), "cnn1d", model_options={"note": 1},
        runs_dir=tmp_path / "runs", progress=False)
    assert len(list((tmp_path / "runs").iterdir())) == 3
    with pytest.raises(ValueError, match="not both"):
        fit(_fresh(data), data, recipe, "cnn1d", runs_dir=tmp_path / "runs", checkpoint_dir=tmp_path / "x")


def test_data_fingerprint_is_the_same_for_every_preparation_of_the_same_data(tiny_root, tmp_path):
    """Colab prepares the dataset anew in each runtime: a run must find its
    checkpoints again, so the fingerprint cannot depend on the folder or on
    how long the preparation took; other clips or labels change it."""
    copy = tmp_path / "copy"
    prepare_synthetic(copy, TINY, workers=1, progress=False)
    assert train.data_fingerprint(TaggedAudio(copy)) == train.data_fingerprint(TaggedAudio(tiny_root))
    other = TaggedAudio(copy)
    other.labels = other.labels.copy()
    other.labels[0, 0] ^= 1
    assert train.data_fingerprint(other) != train.data_fingerprint(TaggedAudio(tiny_root))


def test_runs_are_chosen_on_validation_never_on_test():
    from helpers.train import History, best_on_validation, kept_value
    # run "a" keeps epoch 2 (lowest validation loss) with validation ROC-AUC 0.80; run "b" keeps epoch 1 with 0.75,
    # although b's last epoch reaches 0.90 (not kept) and b would win on a test split that favours it.
    a = History(epoch=[1, 2], valid_loss=[0.5, 0.4], valid_roc_auc=[0.70, 0.80], valid_pr_auc=[0.3, 0.4])
    b = History(epoch=[1, 2], valid_loss=[0.3, 0.6], valid_roc_auc=[0.75, 0.90], valid_pr_auc=[0.3, 0.5])
    test_roc_auc = {"a": 0.70, "b": 0.85}                 # what the test split would say: ignored
    assert kept_value(b, "valid_roc_auc") == 0.75
    assert best_on_validation({"a": a, "b": b}) == "a" != max(test_roc_auc, key=test_roc_auc.get)
    assert best_on_validation({"a": a, "b": b}, "valid_loss", higher_is_better=False) == "b"
    nan = History(epoch=[1], valid_loss=[0.1], valid_roc_auc=[float("nan")], valid_pr_auc=[float("nan")])
    assert best_on_validation({"nan": nan, "a": a}) == "a"
    with pytest.raises(ValueError):
        best_on_validation({})


def test_log_mel_statistics_are_each_bands_mean_and_std(tiny_root):
    from helpers.audio import LogMelSpectrogram
    from helpers.train import log_mel_statistics
    data = TaggedAudio(tiny_root)
    x, y = log_mel_statistics(data, "train", progress=False)
    rows = data.split_indices("train")
    assert x.shape == (len(rows), 192) and np.array_equal(y, data.labels[rows])
    spec = LogMelSpectrogram()(torch.from_numpy(data.waveform(int(rows[1])))[None])[0, 0]
    assert np.allclose(x[1, :96], spec.mean(dim=1).numpy(), atol=1e-4)
    assert np.allclose(x[1, 96:], spec.std(dim=1).numpy(), atol=1e-4)


def test_the_logistic_probe_chooses_its_regularisation_on_validation():
    from helpers.train import fit_logistic_probe
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    y = (x[:, :3] + 0.5 * rng.normal(size=(300, 3)) > 0.8).astype(float)
    y[:, 2] = 0                                       # a tag without positives: predicted by its prior
    probe = fit_logistic_probe(x[:200], y[:200], x[200:], y[200:], cs=(1e-4, 1.0))
    assert probe.c == 1.0 and probe.valid_losses[1.0] < probe.valid_losses[1e-4]
    p = probe.predict_proba(x[200:])
    assert p.shape == (100, 3) and np.all(p[:, 2] == 0.0)
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y[200:, 0], p[:, 0]) > 0.9
    layer = probe.as_linear()
    with torch.no_grad():
        as_torch = torch.sigmoid(layer(torch.from_numpy(x[200:]).float())).numpy()
    assert layer.weight.shape == (3, 10) and np.allclose(as_torch, p, atol=1e-5)
    with pytest.raises(ValueError, match="must match"):
        fit_logistic_probe(x[:200], y[:150], x[200:], y[200:])


def test_won2020_switches_to_sgd_from_the_best_model_and_drops_the_learning_rate(tiny_root, tmp_path):
    from helpers.train import WON2020_RECIPE
    from dataclasses import replace
    assert [WON2020_RECIPE.lr_at(e) for e in (80, 81, 100, 101, 121, 200)] == [None, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5]
    assert WON2020_RECIPE.optimizer == "adam" and WON2020_RECIPE.lr == 1e-4 and WON2020_RECIPE.weight_decay == 1e-4
    assert WON2020_RECIPE.epochs == 200
    data = TaggedAudio(tiny_root)
    small = replace(WON2020_RECIPE, epochs=4, switch_epoch=2, drop_every=1, drops=1, lr=1e-3, batch_size=4,
                    max_batches=3, eval_batch_size=8)

    def fresh():
        torch.manual_seed(5)
        return build_model("cnn1d", n_tags=len(data.tags))

    whole = fit(fresh(), data, small, "cnn1d", checkpoint_dir=tmp_path / "whole", progress=False)
    assert whole.lr == [1e-3, 1e-3, 1e-3, 1e-4]                        # Adam, Adam, SGD 1e-3, SGD 1e-4
    state = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert "momentum_buffer" in str(state["optimizer"]) and state["optimizer"]["param_groups"][0]["nesterov"]
    # the same run in two calls, across the switch (epochs 2 then 4), ends where the one call does
    fit(fresh(), data, replace(small, epochs=2), "cnn1d", checkpoint_dir=tmp_path / "parts", progress=False)
    parts = fit(fresh(), data, small, "cnn1d", checkpoint_dir=tmp_path / "parts", progress=False)
    assert parts.train_loss == pytest.approx(whole.train_loss, rel=1e-6)
    assert parts.valid_loss == pytest.approx(whole.valid_loss, rel=1e-6)
    assert "schedule" not in Recipe().identity() and small.identity()["schedule"] == "won2020"


def test_the_train_command_trains_measures_and_saves_a_checkpoint(tiny_root, tmp_path, monkeypatch, capsys):
    from helpers.__main__ import main
    monkeypatch.setenv("COURSE_RUNS", str(tmp_path / "runs"))
    out = tmp_path / "cnn1d.pt"
    assert main(["train", "cnn1d", "--root", str(tiny_root), "--recipe", "won2020", "--epochs", "1",
                 "--max-batches", "2", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "recipe won2020" in printed and "schedule='won2020'" in printed and "test: macro ROC-AUC" in printed
    model, ckpt = load_checkpoint(out, device="cpu")
    assert ckpt["model_name"] == "cnn1d" and ckpt["recipe"] == "won2020" and "test_roc_auc" in ckpt
    assert main(["train", "cnn1d", "--root", str(tiny_root), "--width", "0.5", "--quiet"]) == 2
    assert "no option width" in capsys.readouterr().err
