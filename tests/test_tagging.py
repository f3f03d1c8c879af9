"""helpers.tagging: sliding windows, the taggram, top tags, similar clips, and
the figures of notebook 06."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers.data import TaggedAudio
from helpers.models import build_model
from helpers.tagging import ClipIndex, Tagger, window_starts
from helpers.train import model_checkpoint, save_checkpoint

TAGS = ["drums", "piano", "quiet", "rock", "synth"]


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
            ).astype(np.float32)


@pytest.fixture(scope="module")
def tagger():
    torch.manual_seed(0)
    return Tagger.from_model(build_model("cnn1d", n_tags=len(TAGS)), TAGS)


@pytest.mark.parametrize("n, window, hop, expected", [
    (48000, 48000, 16000, [0]),                              # exactly one window
    (20000, 48000, 16000, [0]),                              # shorter: one zero-padded window
    (96000, 48000, 16000, [0, 16000, 32000, 48000]),         # 6 s, 3 s windows, 1 s hop
    (100000, 48000, 16000, [0, 16000, 32000, 48000, 52000]),  # a last window aligned with the end
    (96000, 48000, 48000, [0, 48000]),
])
def test_window_starts(n, window, hop, expected):
    assert window_starts(n, window, hop) == expected
    with pytest.raises(ValueError):
        window_starts(n, window, 0)


def test_taggram_rows_are_the_model_on_each_window(tagger):
    wav = tone(7.3)
    result = tagger.tag_waveform(wav, hop_seconds=1.0)
    starts = window_starts(len(wav), 48000, 16000)
    assert result.taggram.shape == (len(starts), len(TAGS))
    assert np.allclose(result.starts, np.array(starts) / 16000)
    with torch.no_grad():
        direct = torch.sigmoid(tagger.model(torch.from_numpy(np.stack([wav[s:s + 48000] for s in starts])))).numpy()
    assert np.allclose(result.taggram, direct, atol=1e-6)
    assert np.allclose(result.probs, direct.mean(0), atol=1e-6)
    assert result.duration == pytest.approx(7.3) and result.window == 3.0
    assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
    top = result.top(3)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert top[0] == (TAGS[int(np.argmax(result.probs))], pytest.approx(float(result.probs.max())))
    summary = result.to_dict(2)
    assert summary["windows"] == len(starts) and len(summary["top_tags"]) == 2
    # describe(k): a head line naming the source, then the k most probable tags (k < the 5 tags, so that
    # leaving tags out is visible), most probable first, aligned, probabilities with 3 decimals
    order = np.argsort(-result.probs, kind="stable")
    lines = result.describe(3).splitlines()
    assert lines[0] == f"waveform (7.3 s, {len(starts)} window(s) of 3.00 s, model {tagger.model_name}):"
    assert len(lines) == 4
    assert [line.split() for line in lines[1:]] == [[TAGS[i], f"{result.probs[i]:.3f}"] for i in order[:3]]
    assert len({line.rindex(" ") for line in lines[1:]}) == 1           # the probabilities in one column
    described = {line.split()[0] for line in lines[1:]}
    assert all(TAGS[i] not in described for i in order[3:])


def test_short_input_is_padded_and_wrong_shapes_refused(tagger):
    result = tagger.tag_waveform(tone(1.0))
    assert result.taggram.shape == (1, len(TAGS)) and result.duration == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mono"):
        tagger.tag_waveform(np.zeros((2, 16000), dtype=np.float32))


def test_tag_file_reads_any_rate_and_channels(tagger, tmp_path):
    mono = tone(4.0)
    sf.write(tmp_path / "mono.wav", mono, 16000, subtype="FLOAT")         # lossless: the same samples back
    stereo = np.stack([tone(4.0, 44100), tone(4.0, 44100, 660.0)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 44100)
    a = tagger.tag_file(tmp_path / "mono.wav")
    assert np.allclose(a.probs, tagger.tag_waveform(mono).probs, atol=1e-6)
    b = tagger.tag_file(tmp_path / "stereo.wav")
    assert b.duration == pytest.approx(4.0, abs=1e-3) and b.source.endswith("stereo.wav")


def test_checkpoint_round_trip_and_embedder_refused(tmp_path):
    torch.manual_seed(0)
    model = build_model("musicnn", n_tags=len(TAGS), width=0.125)
    path = save_checkpoint(tmp_path / "m.pt", model_checkpoint(model, "musicnn", TAGS, {"width": 0.125}))
    tagger = Tagger(path, device="cpu", hop_seconds=2.0)
    assert tagger.tags == TAGS and tagger.model_name == "musicnn" and "musicnn" in repr(tagger)
    wav = tone(5.0)
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(wav[:48000])[None]))[0].numpy()
    assert np.allclose(tagger.tag_waveform(wav).taggram[0], expected, atol=1e-5)
    projection = build_model("linear_projection", embedding_dim=8)
    save_checkpoint(tmp_path / "lp.pt", model_checkpoint(projection, "linear_projection", TAGS,
                                                         {"embedding_dim": 8}))
    with pytest.raises(ValueError, match="not a tagger"):
        Tagger(tmp_path / "lp.pt", device="cpu")
    save_checkpoint(tmp_path / "emb.pt", model_checkpoint(model, "musicnn", TAGS, {"width": 0.125},
                                                          trained_as="embedder"))
    with pytest.raises(ValueError, match="embedder"):
        Tagger(tmp_path / "emb.pt", device="cpu")


def test_clip_index_finds_the_clip_itself_first(tiny_root):
    data = TaggedAudio(tiny_root)
    torch.manual_seed(0)
    tagger = Tagger.from_model(build_model("cnn1d", n_tags=len(data.tags)), data.tags)
    index = ClipIndex(tagger, data, "train", progress=False)
    assert len(index) == len(data.split_indices("train"))
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)
    row = int(index.rows[3])
    hits = index.nearest(index.embeddings[3], k=4)
    assert hits[0]["row"] == row and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)
    assert hits[0]["tags"] == data.tags_of(row) and hits[0]["clip_id"] == data.clips[row]["clip_id"]
    others = index.nearest(index.embeddings[3], k=4, exclude=[row])
    assert row not in [h["row"] for h in others] and len(others) == 4


def test_taggram_figure(tagger):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.plots import plot_taggram

    result = tagger.tag_waveform(tone(6.0), source="folder/song.wav")
    fig = plot_taggram(result, max_tags=3)
    ax = fig.axes[0]
    assert ax.get_title() == "Taggram of song.wav" and "time (s)" in ax.get_xlabel()
    assert len(ax.get_yticklabels()) == 3
    plt.close(fig)
