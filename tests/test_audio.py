"""The log-mel front end against an independent NumPy implementation of
torchaudio's definition, and audio loading of every supported format."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers.audio import AudioLoadError, LogMelSpectrogram, load_audio

SR, N_FFT, HOP, N_MELS, F_MAX = 16000, 512, 256, 96, 8000.0


def reference_logmel(x: np.ndarray, sr=SR, n_fft=N_FFT, hop=HOP, n_mels=N_MELS, f_min=0.0, f_max=F_MAX):
    """torchaudio MelSpectrogram + AmplitudeToDB by their written definition,
    in float64 with explicit loops where it keeps the definition visible."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)                   # periodic Hann
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")   # center=True, reflect
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[t * hop:t * hop + n_fft] * window for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2                     # (frames, bins), power 2
    bin_hz = np.linspace(0, sr // 2, n_fft // 2 + 1)
    mel = lambda f: 2595 * np.log10(1 + f / 700)                       # noqa: E731 (HTK)
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)                      # noqa: E731
    edges = imel(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    fb = np.zeros((len(bin_hz), n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(bin_hz):
            fb[k, m] = max(0.0, min((f - lo) / (c - lo), (hi - f) / (hi - c)))
    return 10 * np.log10(np.maximum(power @ fb, 1e-10)).T, edges       # (n_mels, frames) dB


def compare(x: np.ndarray) -> float:
    ours = LogMelSpectrogram()(torch.from_numpy(x[None].astype(np.float32)))[0, 0].double().numpy()
    ref, _ = reference_logmel(x.astype(np.float32))
    assert ours.shape == ref.shape
    near_top = ref > ref.max() - 60                                       # within 60 dB of the maximum
    return float(np.abs(ours - ref)[near_top].max())


def test_equals_reference_on_noise():
    x = np.random.default_rng(0).standard_normal(48000) * 0.1
    assert compare(x) < 1e-3


@pytest.mark.parametrize("freq", [110.0, 440.0, 1234.5, 3000.0, 7000.0])
def test_equals_reference_on_tones_and_energy_lands_in_its_band(freq):
    t = np.arange(32000) / SR
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    assert compare(x) < 1e-3
    spec = LogMelSpectrogram()(torch.from_numpy(x[None].astype(np.float32)))[0, 0].numpy()
    _, edges = reference_logmel(x[:4096].astype(np.float32))
    band = int(np.argmax(spec[:, 10:-10].mean(1)))
    assert edges[band] < freq < edges[band + 2], (freq, edges[band], edges[band + 2])
    # the loudest band is the one whose centre is nearest the tone (or its neighbour
    # when the tone sits halfway between two centres)
    assert abs(band - int(np.argmin(np.abs(edges[1:-1] - freq)))) <= 1


def test_shapes():
    fe = LogMelSpectrogram()
    assert fe(torch.zeros(2, 48000)).shape == (2, 1, 96, 188)
    assert fe(torch.zeros(2, 1, 48000)).shape == (2, 1, 96, 188)
    assert LogMelSpectrogram(n_mels=128)(torch.zeros(1, 59049)).shape == (1, 1, 128, 231)
    assert fe.n_frames(48000) == 188
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        fe(torch.zeros(48000))
    with pytest.raises(ValueError, match="too short"):
        fe(torch.zeros(1, 100))


def test_silence_is_floor_not_nan():
    out = LogMelSpectrogram()(torch.zeros(1, 16000))
    assert torch.isfinite(out).all() and out.max().item() == pytest.approx(-100.0)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_load_audio_formats(tmp_path, fmt, ext):
    t = np.arange(16000) / 16000
    y = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, y, 16000, format=fmt)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16000) < 2000                                  # mp3 adds encoder padding
    assert 0.15 < np.sqrt(np.mean(out ** 2)) < 0.3


def test_load_audio_downmixes_and_resamples(tmp_path):
    """Two different channels (1000 Hz at 0.4 on the left, 3000 Hz at 0.2 on
    the right) at 44.1 kHz: the output at 16 kHz is their mean, so both tones
    are present at half their channel's amplitude (taking one channel, or
    summing them, gives other amplitudes)."""
    t = np.arange(44100) / 44100
    left = 0.4 * np.sin(2 * np.pi * 1000 * t)
    right = 0.2 * np.sin(2 * np.pi * 3000 * t)
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    sf.write(tmp_path / "stereo.wav", stereo, 44100, subtype="FLOAT")
    out = load_audio(tmp_path / "stereo.wav", sample_rate=16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    amplitude = np.abs(np.fft.rfft(out)) * 2 / len(out)                  # 1 Hz bins over 1 s
    assert amplitude[1000] == pytest.approx(0.2, abs=0.005)               # (0.4 + 0) / 2
    assert amplitude[3000] == pytest.approx(0.1, abs=0.005)               # (0 + 0.2) / 2
    others = np.delete(amplitude, [999, 1000, 1001, 2999, 3000, 3001])
    assert others.max() < 0.005                                           # nothing else: a clean resampling
    # the resampled mean of the channels, sample by sample (away from the filter's edge effects)
    expected = 0.2 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000) + \
        0.1 * np.sin(2 * np.pi * 3000 * np.arange(16000) / 16000)
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 0.01


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(AudioLoadError, match="empty.mp3"):
        load_audio(tmp_path / "empty.mp3")
    (tmp_path / "text.wav").write_text("this is not audio at all" * 50)
    with pytest.raises(AudioLoadError, match="text.wav"):
        load_audio(tmp_path / "text.wav")
    sf.write(tmp_path / "full.wav", np.zeros(16000, dtype=np.float32) + 0.1, 16000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:len(data) // 2])
    with pytest.raises(AudioLoadError, match="cut.wav"):
        load_audio(tmp_path / "cut.wav")
