"""Audio input and the log-mel front end shared by every model.

`load_audio` reads any file that soundfile can decode (wav, flac, ogg, mp3)
into float32 mono at the requested sample rate. `LogMelSpectrogram` is the
front end of every model of the course: a power mel spectrogram in decibels,
numerically equal to torchaudio's ``MelSpectrogram`` followed by
``AmplitudeToDB`` (periodic Hann window, centred frames with reflect padding,
power 2, HTK mel scale, no filterbank normalisation, ``10 * log10(max(x,
1e-10))``), written on ``torch.stft`` so that torchaudio is not needed. Its
options give musicnn's front end too (librosa's Slaney mel filters and
``log10(1 + 10000 x)``).
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from torch import nn

from .config import SAMPLE_RATE

__all__ = ["SAMPLE_RATE", "AudioLoadError", "load_audio", "MEL_SCALES", "hz_to_mel", "mel_to_hz",
           "mel_filterbank", "LogMelSpectrogram"]


class AudioLoadError(RuntimeError):
    """An audio file could not be decoded; the message names the file."""


def _wav_bytes_missing(path: Path) -> int:
    """For a RIFF/WAVE file, how many bytes of its ``data`` chunk are missing
    from the file (libsndfile silently shortens a truncated WAV); 0 otherwise."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return 0
            cid, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return max(0, f.tell() + length - size) if length != 0xFFFFFFFF else 0
            f.seek(length + (length & 1), 1)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono at ``sample_rate`` Hz.

    Multi-channel audio is averaged to mono; other rates are resampled with a
    polyphase filter (``scipy.signal.resample_poly``). Returns an array of
    shape ``(samples,)`` with values nominally in [-1, 1].

    Raises ``FileNotFoundError`` for a missing file and ``AudioLoadError`` for
    an empty, truncated or non-audio file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    if path.stat().st_size == 0:
        raise AudioLoadError(f"{path} is empty (0 bytes): nothing to decode")
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            declared = f.frames
            y = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioLoadError(f"could not decode {path}: {e}") from e
    # libsndfile reports a wrong frame count for MP3, so only trust the header
    # of the other formats: reading fewer frames than declared means truncation.
    is_mp3 = path.suffix.lower() == ".mp3"
    if len(y) == 0:
        raise AudioLoadError(f"{path} holds no audio samples (truncated or empty stream)")
    if not is_mp3 and 0 < declared and len(y) < declared:
        raise AudioLoadError(f"{path} is truncated: the header promises {declared} frames, "
                             f"only {len(y)} could be read")
    missing = _wav_bytes_missing(path)
    if missing:
        raise AudioLoadError(f"{path} is truncated: {missing} bytes of its audio data are missing")
    if not np.all(np.isfinite(y)):
        raise AudioLoadError(f"{path} decodes to non-finite samples")
    y = y.mean(axis=1)
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        y = resample_poly(y, sample_rate // g, rate // g).astype(np.float32)
    return np.ascontiguousarray(y, dtype=np.float32)


#: Mel scales: ``htk`` (torchaudio's default) and ``slaney`` (librosa's default, Slaney's Auditory Toolbox).
MEL_SCALES = ("htk", "slaney")
_SLANEY_F_SP = 200.0 / 3                      # Hz per mel below 1 kHz
_SLANEY_LOGSTEP = math.log(6.4) / 27.0        # log-Hz per mel above 1 kHz
_SLANEY_MIN_MEL = 1000.0 / _SLANEY_F_SP       # 15 mels at 1 kHz


def hz_to_mel(f: np.ndarray | float, mel_scale: str = "htk") -> np.ndarray:
    """Hz to mels. ``htk``: ``2595 * log10(1 + f / 700)``; ``slaney``: linear
    below 1 kHz (``f / (200 / 3)``), logarithmic above (``15 + log(f / 1000) /
    (log(6.4) / 27)``)."""
    f = np.asarray(f, dtype=np.float64)
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    _check_mel_scale(mel_scale)
    return np.where(f >= 1000.0, _SLANEY_MIN_MEL + np.log(np.maximum(f, 1e-10) / 1000.0) / _SLANEY_LOGSTEP,
                    f / _SLANEY_F_SP)


def mel_to_hz(m: np.ndarray | float, mel_scale: str = "htk") -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    _check_mel_scale(mel_scale)
    return np.where(m >= _SLANEY_MIN_MEL, 1000.0 * np.exp(_SLANEY_LOGSTEP * (m - _SLANEY_MIN_MEL)), m * _SLANEY_F_SP)


def _check_mel_scale(mel_scale: str) -> None:
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"unknown mel_scale {mel_scale!r}: use one of {MEL_SCALES}")


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = 512, n_mels: int = 96,
                   f_min: float = 0.0, f_max: float | None = 8000.0, mel_scale: str = "htk",
                   norm: str | None = None) -> torch.Tensor:
    """Triangular mel filters, shape ``(n_fft // 2 + 1, n_mels)``.

    Filter ``m`` rises from mel point ``m`` to ``m + 1`` and falls to
    ``m + 2``, with ``n_mels + 2`` points evenly spaced on ``mel_scale``
    between ``f_min`` and ``f_max``; bin frequencies are ``linspace(0, sr // 2,
    n_fft // 2 + 1)``. ``norm=None`` leaves every peak at 1 (torchaudio's
    default); ``norm="slaney"`` divides each filter by half its width in Hz
    (``2 / (f[m + 2] - f[m])``), so that each has the same area (librosa's
    default). ``mel_scale="slaney", norm="slaney"`` is librosa's
    ``filters.mel`` and musicnn's front end.
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"unknown norm {norm!r}: use None or 'slaney'")
    f_max = sample_rate / 2 if f_max is None else f_max
    if mel_scale == "htk":          # in float32, as torchaudio (and every model trained by the course so far)
        freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
        m_pts = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2)
        f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    else:                           # in float64, as librosa
        freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)
        m_pts = np.linspace(float(hz_to_mel(f_min, mel_scale)), float(hz_to_mel(f_max, mel_scale)), n_mels + 2)
        f_pts = torch.from_numpy(mel_to_hz(m_pts, mel_scale))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - freqs.unsqueeze(1)          # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (f_pts[2:] - f_pts[:-2])).unsqueeze(0)
    return fb.float()


class LogMelSpectrogram(nn.Module):
    """Waveform ``(batch, samples)`` or ``(batch, 1, samples)`` to log-mel
    ``(batch, 1, n_mels, frames)``, with ``frames = 1 + samples // hop``.

    A 3 s clip at 16 kHz (48,000 samples) gives ``(batch, 1, 96, 188)``. The
    front end always runs in float32, also under mixed precision.

    Two conventions of the field, chosen by the options (torchaudio's names):

    - the course's, torchaudio's ``MelSpectrogram`` + ``AmplitudeToDB``
      (the defaults): HTK mel scale, unnormalised filters, decibels
      ``10 * log10(max(x, 1e-10))``;
    - musicnn's, librosa's ``feature.melspectrogram`` then ``log10(1 + 10000
      x)``: ``mel_scale="slaney", norm="slaney", log="log1p"``.

    Both use a periodic Hann window, centred frames with reflect padding and
    the power spectrum (power 2). ``log="log1p"`` computes ``log10(1 +
    log_gain * x)``.

    A batch is transformed :attr:`CLIPS_PER_PIECE` clips at a time: the
    intermediate spectra of a few clips stay in the processor's cache, which
    makes a batch of 48 to 64 three-second clips 2 times faster on a CPU than
    in one piece (the same numbers).
    """

    #: Clips transformed at a time (see above).
    CLIPS_PER_PIECE = 16

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 512, hop_length: int | None = None,
                 f_min: float = 0.0, f_max: float | None = 8000.0, n_mels: int = 96, mel_scale: str = "htk",
                 norm: str | None = None, log: str = "db", log_gain: float = 10000.0) -> None:
        super().__init__()
        if log not in ("db", "log1p"):
            raise ValueError(f"unknown log {log!r}: use 'db' (decibels) or 'log1p' (log10(1 + log_gain * x))")
        self.sample_rate, self.n_fft, self.n_mels = sample_rate, n_fft, n_mels
        self.hop_length = hop_length or n_fft // 2
        self.f_min, self.f_max = f_min, f_max
        self.mel_scale, self.norm, self.log, self.log_gain = mel_scale, norm, log, log_gain
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, norm),
                             persistent=False)

    def extra_repr(self) -> str:
        convention = "" if (self.mel_scale, self.norm, self.log) == ("htk", None, "db") else \
            f", mel_scale={self.mel_scale}, norm={self.norm}, log={self.log}"
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
                f"f_min={self.f_min}, f_max={self.f_max}, n_mels={self.n_mels}{convention}")

    def n_frames(self, n_samples: int) -> int:
        """Number of frames for an input of ``n_samples`` samples."""
        return 1 + n_samples // self.hop_length

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        if wav.dim() != 2:
            raise ValueError(f"LogMelSpectrogram expects a waveform batch of shape (batch, samples) "
                             f"or (batch, 1, samples), got {tuple(wav.shape)}")
        if wav.shape[-1] <= self.n_fft // 2:
            raise ValueError(f"input of {wav.shape[-1]} samples is too short for n_fft={self.n_fft}: "
                             f"give at least {self.n_fft // 2 + 1} samples")
        with torch.autocast(device_type=wav.device.type, enabled=False):
            pieces = [self._log_mel(piece.float()) for piece in wav.split(self.CLIPS_PER_PIECE)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        half = self.n_fft // 2                     # centred frames: reflect-pad half a frame each side (by hand,
        padded = torch.cat([wav[:, 1:half + 1].flip(1), wav, wav[:, -half - 1:-1].flip(1)], dim=1)  # 3x faster)
        spec = torch.stft(padded, self.n_fft, hop_length=self.hop_length, win_length=self.n_fft, window=self.window,
                          center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()                 # (batch, n_freqs, frames)
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)
        if self.log == "db":
            out = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        else:
            out = torch.log10(1.0 + self.log_gain * mel)
        return out.unsqueeze(1)
