"""Metric learning (Question 3): the triplet loss, triplet sampling, Recall@K
of a model's embeddings, triplet training with checkpoints and resume; and the
reduced-width backbones that the cpu profile trains (as taggers in notebook 05
and as embedders in notebook 04)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers.data import (ChunkDataset, TagFrequencyTripletDataset, TaggedAudio, TripletDataset, song_of,
                          triplet_dataset)
from helpers.metrics import recall_at_ks
from helpers.models import build_model, count_parameters, layer_shapes, scaled_channels
from helpers.retrieval import evaluate_retrieval, fit_triplet, similarity_matrix, triplet_loss
from helpers.train import Recipe, embed_clips, load_checkpoint

QUICK = Recipe(optimizer="adam", lr=1e-3, epochs=2, batch_size=4, eval_batch_size=8)


# ----------------------------------------------------------------------------- the loss

def test_cosine_triplet_loss_is_the_homeworks():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0], [1.0, 0.0]])          # cos(a, p) = 0.7071, 1
    n = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])         # cos(a, n) = 0, -1
    expected = (max(0.0, 0.4 - 2 ** -0.5 + 0.0) + max(0.0, 0.4 - 1.0 - 1.0)) / 2
    assert triplet_loss(a, p, n).item() == pytest.approx(expected)
    assert triplet_loss(a, p, n, margin=1.0).item() == pytest.approx((1 - 2 ** -0.5) / 2)
    # scale-free: multiplying the embeddings changes nothing
    assert triplet_loss(3 * a, 5 * p, 7 * n).item() == pytest.approx(expected)


def test_euclidean_triplet_loss_matches_torch():
    gen = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(6, 5, generator=gen) for _ in range(3))
    ours = triplet_loss(a, p, n, margin=1.0, distance="euclidean")
    ref = nn.TripletMarginLoss(margin=1.0, p=2, eps=0.0)(a, p, n)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown distance"):
        triplet_loss(a, p, n, distance="manhattan")


def test_similarity_matrix():
    e = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    cos = similarity_matrix(e, "cosine")
    assert np.allclose(np.diag(cos), 1) and cos[0, 2] > cos[0, 1]
    euc = similarity_matrix(e, "euclidean")
    assert np.allclose(euc[0, 1], -np.sqrt(10)) and euc[1, 2] > euc[0, 1]


# ----------------------------------------------------------------------------- in-batch hard negatives

def test_hard_negatives_mine_the_batch():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    n = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])       # easy negatives: cos -1
    easy = triplet_loss(a, p, n)
    assert easy.item() == 0.0
    # anchor 0's candidates: a1, p1 (other triplet) and n0, n1; the hardest is p1 (cos 0.0995 with a0)
    hardest = triplet_loss(a, p, n, hard_negatives=0.25)
    cos_ap = torch.nn.functional.cosine_similarity(a, p, dim=1)
    close = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(torch.cat([a, p, n]), dim=1).T
    expected = torch.relu(0.4 - cos_ap + torch.stack([close[0, [1, 3, 4, 5]].max(), close[1, [0, 2, 4, 5]].max()]))
    assert hardest.item() == pytest.approx(expected.mean().item())
    # all candidates: the mean of the 4 candidates' closeness
    mean_all = torch.stack([close[0, [1, 3, 4, 5]].mean(), close[1, [0, 2, 4, 5]].mean()])
    assert triplet_loss(a, p, n, hard_negatives=1.0).item() == pytest.approx(
        torch.relu(0.4 - cos_ap + mean_all).mean().item())
    # triplets with the same key (tag or song) are not negatives of each other: only n0 and n1 remain
    same = triplet_loss(a, p, n, hard_negatives=1.0, keys=torch.tensor([7, 7]))
    only_n = torch.stack([close[0, [4, 5]].mean(), close[1, [4, 5]].mean()])
    assert same.item() == pytest.approx(torch.relu(0.4 - cos_ap + only_n).mean().item())
    with pytest.raises(ValueError, match="fraction"):
        triplet_loss(a, p, n, hard_negatives=0.0)


def test_hard_negatives_euclidean_gradient_is_finite():
    z = torch.randn(4, 3, requires_grad=True)
    loss = triplet_loss(z[:2], z[:2] + 0.0, z[2:], distance="euclidean", margin=1.0, hard_negatives=0.5)
    loss.backward()
    assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- sampling

def test_song_of():
    assert song_of("f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3") == \
        "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria"
    assert song_of("song0005 (pop)") == "song0005 (pop)"


def test_song_triplets_are_two_clips_of_a_song_and_another_song(tiny_root):
    data = TaggedAudio(tiny_root)
    ds = triplet_dataset(data, "train", 16000, "song")
    songs = [song_of(data.clips[int(r)]["origin"]) for r in ds.crops.indices]
    torch.manual_seed(0)
    seen = set()
    for _ in range(100):
        a, p, n, key = ds.sample_indices()
        assert a != p and songs[a] == songs[p] != songs[n] and ds.song[a] == key
        seen.add(key)
    assert len(seen) > 1
    wa, wp, wn, key = ds[3]
    assert wa.shape == (16000,) and isinstance(key, int)


@pytest.mark.parametrize("sampling", ["tag", "tag_frequency"])
def test_triplets_respect_the_tag(tiny_root, sampling):
    data = TaggedAudio(tiny_root)
    ds = triplet_dataset(data, "train", 16000, sampling)
    labels = data.labels[ds.crops.indices].astype(bool)
    torch.manual_seed(0)
    for _ in range(50):
        a, p, n, tag = ds.sample_indices()
        assert a != p and labels[a, tag] and labels[p, tag] and not labels[n, tag]
    wa, wp, wn, tag = ds[0]
    assert wa.shape == wp.shape == wn.shape == (16000,) and 0 <= tag < len(data.tags)
    assert len(ds) == len(ds.crops)
    with pytest.raises(ValueError, match="unknown triplet sampling"):
        triplet_dataset(data, "train", 16000, "latent")


def test_tag_frequency_sampling_follows_the_counts(tiny_root):
    data = TaggedAudio(tiny_root)
    uniform, weighted = TripletDataset(data, "train", 16000), TagFrequencyTripletDataset(data, "train", 16000)
    counts = np.array([len(weighted.positives[t]) for t in weighted.usable_tags], dtype=float)
    torch.manual_seed(0)
    draws = 4000
    seen_w = np.bincount([weighted.usable_tags.index(weighted.sample_indices()[3]) for _ in range(draws)],
                         minlength=len(counts))
    seen_u = np.bincount([uniform.usable_tags.index(uniform.sample_indices()[3]) for _ in range(draws)],
                         minlength=len(counts))
    assert np.abs(seen_w / draws - counts / counts.sum()).max() < 0.03
    assert np.abs(seen_u / draws - 1 / len(counts)).max() < 0.03


# ----------------------------------------------------------------------------- Recall@K of a model

def test_evaluate_retrieval_matches_the_metric(tiny_root):
    data = TaggedAudio(tiny_root)
    torch.manual_seed(0)
    model = build_model("cnn1d", n_tags=len(data.tags)).eval()
    chunks = ChunkDataset(data, "train", 16000)

    def by_hand(layer):
        """Each clip's chunks through the model one clip at a time, averaged: back to back, and one more
        aligned with the clip's end when they stop short of it."""
        out = []
        with torch.no_grad():
            for row in chunks.clip_indices:
                wave = torch.from_numpy(data.waveform(int(row)))
                starts = list(range(0, len(wave) - 16000 + 1, 16000))
                starts += [len(wave) - 16000] if len(wave) % 16000 else []
                x = torch.stack([wave[s:s + 16000] for s in starts])
                out.append((model.embed(x) if layer == "penultimate" else model(x)).mean(0).numpy())
        return np.stack(out)

    # penultimate: the tagger's embedding, L2-normalised for the cosine
    recall, emb, y = evaluate_retrieval(model, data, "train", chunk_samples=16000, device="cpu", progress=False,
                                        embedding="penultimate")
    ref = by_hand("penultimate")
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(emb, ref, atol=1e-5) and np.array_equal(y, chunks.labels.numpy())
    assert recall == pytest.approx(recall_at_ks(ref @ ref.T, y))
    assert np.allclose(embed_clips(model, chunks, "penultimate", normalize=True, progress=False).values, ref, atol=1e-5)
    # output (the default): what the model returns, averaged over chunks, then compared
    logits = by_hand("output")
    raw_recall, raw, _ = evaluate_retrieval(model, data, "train", "euclidean", chunk_samples=16000, device="cpu",
                                            progress=False)
    assert np.allclose(raw, logits, atol=1e-5)
    assert raw_recall == pytest.approx(recall_at_ks(similarity_matrix(raw, "euclidean"), y))
    cos_recall, unit, _ = evaluate_retrieval(model, data, "train", chunk_samples=16000, device="cpu", progress=False)
    assert np.allclose(unit, logits / np.linalg.norm(logits, axis=1, keepdims=True), atol=1e-5)
    assert cos_recall == pytest.approx(recall_at_ks(unit @ unit.T, y))


# ----------------------------------------------------------------------------- training

def test_fit_triplet_learns_saves_and_resumes(tiny_root, tmp_path):
    data = TaggedAudio(tiny_root)

    def fresh():
        torch.manual_seed(0)
        return build_model("cnn1d", n_tags=len(data.tags))

    model = fresh()
    h = fit_triplet(model, data, QUICK, "cnn1d", checkpoint_dir=tmp_path / "a", progress=False)
    assert h.epoch == [1, 2] and all(np.isfinite(h.train_loss)) and h.train_clips_per_s[0] > 0
    assert set(h.valid_recall[0]) <= {"R@1", "R@2", "R@4", "R@8"} and 0 <= h.valid_score[0] <= 1
    assert len(h.zero_loss_share) == 2 and all(0 <= v <= 1 for v in h.zero_loss_share)
    loaded, ckpt = load_checkpoint(tmp_path / "a" / "best.pt", device="cpu")
    assert ckpt["trained_as"] == "embedder" and ckpt["loss"]["margin"] == 0.4 and ckpt["epoch"] == h.best_epoch
    x = torch.from_numpy(np.stack([data.waveform(0)[:48000], data.waveform(1)[:48000]]))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.embed(x), loaded.embed(x))      # the best epoch's weights are kept
    # a second call resumes from last.pt: nothing left to do, same history
    again = fit_triplet(fresh(), data, QUICK, "cnn1d", checkpoint_dir=tmp_path / "a", progress=False)
    assert again.train_loss == pytest.approx(h.train_loss) and again.epoch == h.epoch
    with pytest.raises(ValueError, match="another run"):
        fit_triplet(fresh(), data, QUICK, "cnn1d", checkpoint_dir=tmp_path / "a", progress=False,
                    distance="euclidean")


def test_fit_triplet_is_reproducible_and_trains_linear_projection(tiny_root):
    data = TaggedAudio(tiny_root)
    recipe = Recipe(optimizer="adam", lr=1e-4, epochs=1, batch_size=4, max_batches=3, eval_batch_size=8)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("linear_projection", embedding_dim=16)
        before = model.projection.weight.detach().clone()
        runs.append(fit_triplet(model, data, recipe, "linear_projection", progress=False,
                                sampling="song", distance="euclidean", margin=1.0, hard_negatives=0.5))
        assert not torch.equal(before, model.projection.weight)
    assert runs[0].train_loss == runs[1].train_loss


# ----------------------------------------------------------------------------- reduced-width backbones

@pytest.mark.parametrize("name", ["crnn", "musicnn", "short_chunk", "short_chunk_res"])
def test_width_option_scales_the_channels(name):
    torch.manual_seed(0)
    full, quarter = build_model(name, n_tags=10), build_model(name, n_tags=10, width=0.25)
    assert full.width == 1.0 and quarter.width == 0.25
    assert count_parameters(quarter) < count_parameters(full) / 4
    assert "width=0.25" in repr(quarter) and "width" not in repr(full)
    shapes_full, shapes_quarter = dict(layer_shapes(full)), dict(layer_shapes(quarter))
    assert shapes_full.keys() == shapes_quarter.keys()
    for layer, shape in shapes_full.items():
        if layer.startswith("layer"):
            assert shapes_quarter[layer][0] == scaled_channels(shape[0], 0.25)   # channels scaled
            assert shapes_quarter[layer][1:] == shape[1:]                        # sizes kept
    assert shapes_quarter["linear"] == (10,)
    x = 0.1 * torch.randn(2, quarter.input_samples)
    nn.BCEWithLogitsLoss()(quarter(x), torch.ones(2, 10)).backward()
    assert quarter.embed(x).shape == (2, quarter.embedding_dim)


def test_width_defaults_and_errors():
    assert scaled_channels(204, 0.25) == 51 and scaled_channels(51, 0.25) == 13 and scaled_channels(3, 0.1) == 1
    musicnn = build_model("musicnn", n_tags=50, width=0.25)
    assert musicnn.front_end.out_channels == 2 * 51 + 3 * 13 and musicnn.embedding_dim == 50
    short = build_model("short_chunk", n_tags=50, width=0.25)
    assert [getattr(short, f"layer{i}")[0].out_channels for i in range(1, 8)] == [32, 32, 64, 64, 64, 64, 128]
    for bad in (0, -1, 5, "half"):
        with pytest.raises(ValueError, match="width"):
            build_model("crnn", width=bad)
    with pytest.raises(ValueError, match="width"):
        build_model("cnn1d", width=0.5)                          # the homework's models keep their size


def test_per_triplet_losses_and_the_zero_loss_share():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.0]])
    n = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    each = triplet_loss(a, p, n, margin=0.4, reduction="none")
    assert each.shape == (3,) and each[0] == 0 and each[2] == 0 and each[1] > 0     # two ranked right by the margin
    assert triplet_loss(a, p, n, margin=0.4) == pytest.approx(each.mean().item())
    with pytest.raises(ValueError, match="reduction"):
        triplet_loss(a, p, n, reduction="sum")
