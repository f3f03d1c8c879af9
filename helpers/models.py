"""Every model of the course, built from a few named blocks.

The file reads like the papers' tables: building blocks first, then each model
as a sequence of named blocks (``layer1`` .. ``layerN``) with the table's
sizes, so that ``print(model)`` reads like the homework's printouts.

Every model takes a 16 kHz waveform batch ``(batch, samples)`` (or
``(batch, 1, samples)``) and starts with its own log-mel front end
(:class:`helpers.audio.LogMelSpectrogram`: n_fft 512, hop 256, f_max 8 kHz,
96 mels, or 128 for the short-chunk models) followed by ``BatchNorm2d(1)`` on
the dB spectrogram. A 3 s crop (48,000 samples) gives 96 x 188 frames.

Classifiers return logits ``(batch, n_tags)`` (train with
``BCEWithLogitsLoss``; apply a sigmoid for probabilities) and offer
``embed(wav) -> (batch, embedding_dim)``, the input of their last ``Linear``
(before the head's dropout). ``linear_projection``, the metric-learning
baseline, returns its embedding from both ``forward`` and ``embed``.

Models, their mels and training chunk, and the inputs they accept:

- ``cnn1d``: 96 mels, 3 s; any length (global average pool over time).
- ``cnn2d``: 96 mels, 3 s; at least 2.86 s (global max pool after layer4).
- ``cnn2d_tuned``: 96 mels, 3 s; at least 1.52 s with 5 blocks (global max pool).
- ``crnn``: 96 mels, 3 s; at least 1.52 s (a GRU over the remaining time steps).
- ``musicnn``: 96 mels, 3 s; any length (temporal max and mean pooling).
- ``short_chunk``: 128 mels, 59,049 samples (3.69 s); at least 2.03 s (global max pool).
- ``short_chunk_res``: 128 mels, 59,049 samples; any length (global max pool).
- ``linear_projection``: 96 mels, 3 s; exactly 48,000 samples (it flattens the spectrogram).

The four state-of-the-art models (``crnn``, ``musicnn``, ``short_chunk``,
``short_chunk_res``) take a ``width`` option, a channel multiplier: 1.0 (the
default) is the paper's model; the course's ``cpu`` profile trains them at
``width=0.25`` (about 1/16 of the convolution cost), labelled as such.

Each model's ``min_samples`` gives its shortest input ("any length" above:
at least 257 samples, the front end's minimum); a shorter one, or a batch of
the wrong rank, raises a ``ValueError`` naming the expected shape.

Build a model with :func:`build_model`, print its per-block output shapes with
:func:`layer_shapes`, and measure every model with :func:`model_table`.
"""
from __future__ import annotations

import inspect
import math
import time
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
from torch import nn

from helpers.audio import SAMPLE_RATE, LogMelSpectrogram

__all__ = [
    "MODEL_NAMES", "build_model", "layer_shapes", "count_parameters", "model_table", "format_table",
    "scaled_channels",
    "Conv1dBlock", "Conv2dBlock", "ResBlock2d", "GlobalPool", "TimbralBranch", "TemporalBranch",
    "MusicnnFrontEnd", "SpectrogramModel", "Classifier", "CNN1D", "CNN2D", "TunedCNN2D", "CRNN",
    "Musicnn", "ShortChunkCNN", "ShortChunkResCNN", "LinearProjection",
]

#: Samples in a 3 s training crop at 16 kHz (the homework's models).
THREE_SECONDS = 3 * SAMPLE_RATE
#: Samples in a short-chunk training crop (3^10, 3.69 s at 16 kHz).
SHORT_CHUNK = 59049


# --------------------------------------------------------------------------- blocks

class Conv1dBlock(nn.Sequential):
    """``Conv1d -> BatchNorm1d -> ReLU [-> MaxPool1d(pool)]``.

    ``(batch, in_channels, time) -> (batch, out_channels, time')`` with
    ``time' = (time + 2 * padding - kernel_size + 1) // pool``. ``padding``
    defaults to ``kernel_size // 2`` (same length); ``pool=None`` leaves the
    pooling out.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: int | None = None, pool: int | None = None) -> None:
        padding = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = [nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding),
                                   nn.BatchNorm1d(out_channels), nn.ReLU()]
        if pool is not None:
            layers.append(nn.MaxPool1d(pool))
        super().__init__(*layers)


class Conv2dBlock(nn.Sequential):
    """``Conv2d(3x3, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(pool)``.

    ``(batch, in_channels, freq, time) -> (batch, out_channels, freq // pf,
    time // pt)`` for ``pool = (pf, pt)``: the 3x3 convolution keeps the size,
    the max pool divides it (rounding down).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int] | int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU(), nn.MaxPool2d(pool))


class ResBlock2d(nn.Module):
    """Residual block: ``conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN``, plus a
    shortcut, then ``ReLU`` and an optional ``MaxPool2d(pool)``.

    The shortcut is the identity when the shape is kept, else a convolution
    with BatchNorm: 3x3 with the block's stride when it downsamples (Won et
    al.'s short-chunk ResNet), 1x1 when only the channels change.

    ``(batch, in_channels, freq, time) -> (batch, out_channels, freq', time')``
    with ``ceil(size / stride)`` after the convolutions and ``// pool`` after
    the pooling.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 pool: tuple[int, int] | int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), nn.BatchNorm2d(out_channels))
        elif in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(pool) if pool is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + self.shortcut(x))
        return self.pool(out) if self.pool is not None else out


class GlobalPool(nn.Module):
    """Pool every axis after the channels: ``(batch, channels, ...) -> (batch,
    channels)``, by ``"max"`` or ``"mean"``; ``"max+mean"`` concatenates both
    to ``(batch, 2 * channels)`` (max first).

    Written with ``amax``/``mean`` (deterministic backward on every device).
    """

    MODES = ("max", "mean", "max+mean")

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"GlobalPool mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        if self.mode == "max":
            return x.amax(dim=dims)
        if self.mode == "mean":
            return x.mean(dim=dims)
        return torch.cat([x.amax(dim=dims), x.mean(dim=dims)], dim=1)


class TimbralBranch(nn.Module):
    """Musicnn's timbral (vertical) filters: ``Conv2d(1, channels, (height,
    width), padding (0, width // 2)) -> BN -> ReLU``, then max over frequency.

    ``(batch, 1, n_mels, time) -> (batch, channels, time)``.
    """

    def __init__(self, channels: int, height: int, width: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, (height, width), padding=(0, width // 2))
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x))).amax(dim=2)


class TemporalBranch(nn.Module):
    """Musicnn's temporal (horizontal) filters: mean over frequency, then
    ``Conv1d(1, channels, length, padding length // 2) -> BN -> ReLU``.

    ``(batch, 1, n_mels, time) -> (batch, channels, time)`` (odd ``length``).
    """

    def __init__(self, channels: int, length: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, channels, length, padding=length // 2)
        self.bn = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x.mean(dim=2))))


class MusicnnFrontEnd(nn.Module):
    """Musicnn's musically motivated front end (Pons et al. 2018).

    Timbral filters spanning 70% and 40% of the mel axis (67 and 38 bands of
    96, width 7, 204 channels each) and temporal filters of 129, 65 and 33
    frames (51 channels each), concatenated along channels:
    ``(batch, 1, n_mels, time) -> (batch, 561, time)``.
    """

    def __init__(self, n_mels: int = 96, timbral_channels: int = 204, timbral_width: int = 7,
                 timbral_spans: Sequence[float] = (0.7, 0.4), temporal_channels: int = 51,
                 temporal_lengths: Sequence[int] = (129, 65, 33)) -> None:
        super().__init__()
        self.timbral = nn.ModuleList(TimbralBranch(timbral_channels, int(span * n_mels), timbral_width)
                                     for span in timbral_spans)
        self.temporal = nn.ModuleList(TemporalBranch(temporal_channels, length) for length in temporal_lengths)
        self.out_channels = timbral_channels * len(timbral_spans) + temporal_channels * len(temporal_lengths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in (*self.timbral, *self.temporal)], dim=1)


# --------------------------------------------------------------------------- base classes

class SpectrogramModel(nn.Module):
    """Base of every model: waveform checks, log-mel front end, ``spec_bn``.

    Attributes: ``name`` (the :func:`build_model` name), ``input_samples``
    (training chunk length in samples at 16 kHz), ``n_mels``,
    ``embedding_dim``, ``min_frames`` (fewest spectrogram frames the layers
    accept) and the derived ``min_samples`` / ``max_samples``.
    """

    name: str = ""
    sample_rate: int = SAMPLE_RATE
    embedding_dim: int
    #: True for models that need exactly ``input_samples`` samples.
    exact_length: bool = False

    def __init__(self, n_mels: int = 96, input_samples: int = THREE_SECONDS, min_frames: int = 1) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.input_samples = input_samples
        self.min_frames = min_frames
        self.spec = LogMelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=256, f_min=0.0,
                                      f_max=8000.0, n_mels=n_mels)
        self.spec_bn = nn.BatchNorm2d(1)

    @property
    def input_seconds(self) -> float:
        """Training chunk length in seconds."""
        return self.input_samples / self.sample_rate

    @property
    def min_samples(self) -> int:
        """Shortest waveform (samples) the model accepts."""
        if self.exact_length:
            return self.input_samples
        hop, n_fft = self.spec.hop_length, self.spec.n_fft
        return max(n_fft // 2 + 1, (self.min_frames - 1) * hop)

    @property
    def max_samples(self) -> int | None:
        """Longest waveform (samples) the model accepts; ``None``: no limit."""
        return self.input_samples if self.exact_length else None

    def extra_repr(self) -> str:
        return f"input_samples={self.input_samples} ({self.input_seconds:.2f} s), n_mels={self.n_mels}"

    def expected_shape(self) -> str:
        """The accepted input shape, in words (used in error messages)."""
        if self.exact_length:
            length = f"samples == {self.input_samples}"
        else:
            length = f"samples >= {self.min_samples}"
        return (f"(batch, samples) or (batch, 1, samples) float waveform at {self.sample_rate} Hz with {length} "
                f"(trained on {self.input_samples} samples = {self.input_seconds:.2f} s)")

    def check_input(self, wav: torch.Tensor) -> torch.Tensor:
        """Validate a waveform batch and return it as ``(batch, samples)``."""
        if not isinstance(wav, torch.Tensor):
            raise ValueError(f"{self.name or type(self).__name__} expects a torch.Tensor of shape "
                             f"{self.expected_shape()}, got {type(wav).__name__}")
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        n = wav.shape[-1] if wav.dim() else 0
        bad_length = n < self.min_samples or (self.max_samples is not None and n > self.max_samples)
        if wav.dim() != 2 or bad_length or wav.shape[0] == 0:
            raise ValueError(f"{self.name or type(self).__name__} expects {self.expected_shape()}, "
                             f"got shape {tuple(wav.shape)}")
        return wav

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform batch -> normalised log-mel ``(batch, 1, n_mels, frames)``."""
        return self.spec_bn(self.spec(self.check_input(wav)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel ``(batch, 1, n_mels, frames)`` -> embedding
        ``(batch, embedding_dim)``."""
        raise NotImplementedError

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, samples)`` -> embedding ``(batch, embedding_dim)``."""
        return self.features(self.log_mel(wav))


class Classifier(SpectrogramModel):
    """A tagger: ``forward(wav) = linear(dropout(embed(wav)))``, logits
    ``(batch, n_tags)``. Subclasses set ``self.linear`` (the last layer) and,
    where the paper has one, ``self.dropout``."""

    linear: nn.Linear

    def __init__(self, n_tags: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_tags < 1:
            raise ValueError(f"n_tags must be at least 1, got {n_tags}")
        self.n_tags = n_tags
        self.dropout: nn.Module | None = None      # set to a module by models that have one

    def extra_repr(self) -> str:
        width = getattr(self, "width", 1.0)
        return f"{super().extra_repr()}, n_tags={self.n_tags}" + (f", width={width:g}" if width != 1.0 else "")

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, samples)`` at 16 kHz -> logits ``(batch, n_tags)``."""
        z = self.embed(wav)
        if self.dropout is not None:
            z = self.dropout(z)
        return self.linear(z)


def _min_frames(time_pools: Sequence[int]) -> int:
    """Fewest frames that survive max pools of these kernels along time
    (each ``floor(t / k)`` must stay >= 1)."""
    return math.prod(time_pools)


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest integer (at least 1): the
    channel count of a layer in a model built with the ``width`` option."""
    if not (isinstance(width, (int, float)) and 0 < width <= 4):
        raise ValueError(f"width must be a channel multiplier in (0, 4], e.g. 0.25 or 1.0, got {width!r}")
    return max(1, int(round(channels * width)))


# --------------------------------------------------------------------------- homework models

class CNN1D(Classifier):
    """The homework's 1D CNN baseline (exact): 17,300 parameters for 50 tags.

    The log-mel ``(batch, 96, 188)`` is read as 96 channels over time:
    ``layer1`` Conv1d(96->32, k 3, padding 3) -> BN -> ReLU -> MaxPool(3):
    32 x 64; ``layer2`` 32 x 22; ``layer3`` 32 x 8; global average pool over
    time -> 32; ``linear`` -> n_tags. Accepts any length.
    """

    name = "cnn1d"

    def __init__(self, n_tags: int = 50) -> None:
        super().__init__(n_tags, n_mels=96, input_samples=THREE_SECONDS)
        self.layer1 = Conv1dBlock(96, 32, 3, padding=3, pool=3)
        self.layer2 = Conv1dBlock(32, 32, 3, padding=3, pool=3)
        self.layer3 = Conv1dBlock(32, 32, 3, padding=3, pool=3)
        self.global_pool = GlobalPool("mean")
        self.linear = nn.Linear(32, n_tags)
        self.embedding_dim = 32

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.squeeze(1)                                   # (batch, 96, frames)
        return self.global_pool(self.layer3(self.layer2(self.layer1(x))))


class CNN2D(Classifier):
    """Question 1, the homework's Figure 1 2D CNN: 299,892 parameters for 50 tags.

    Blocks Conv2d(3x3, padding 1) -> BN -> ReLU -> MaxPool on ``(batch, 1, 96,
    188)``: ``layer1`` 1->64 pool (4,4): 64 x 24 x 47; ``layer2`` 64->128 pool
    (3,3): 128 x 8 x 15; ``layer3`` 128->128 pool (3,3): 128 x 2 x 5;
    ``layer4`` 128->64 pool (2,5): 64 x 1 x 1; ``global_pool`` (max over what
    remains, a no-op at 3 s) -> 64; ``linear`` -> n_tags. Needs at least 180
    frames (45,824 samples, 2.86 s).
    """

    name = "cnn2d"
    LAYOUT = ((64, (4, 4)), (128, (3, 3)), (128, (3, 3)), (64, (2, 5)))

    def __init__(self, n_tags: int = 50) -> None:
        super().__init__(n_tags, n_mels=96, input_samples=THREE_SECONDS,
                         min_frames=_min_frames([p[1] for _, p in self.LAYOUT]))
        in_ch = 1
        for i, (out_ch, pool) in enumerate(self.LAYOUT, start=1):
            setattr(self, f"layer{i}", Conv2dBlock(in_ch, out_ch, pool))
            in_ch = out_ch
        self.global_pool = GlobalPool("max")
        self.linear = nn.Linear(in_ch, n_tags)
        self.embedding_dim = in_ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(self.LAYOUT) + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.global_pool(x)


class TunedCNN2D(Classifier):
    """Question 2, the report's Figure 4 improved 2D CNN, with tuning options.

    ``n_blocks=5`` (default, Figure 4): channels 64, 128, 128, 128, 64 with
    pools (2,2), (2,2), (2,2), (3,4), (4,3): 64 x 48 x 94, 128 x 24 x 47,
    128 x 12 x 23, 128 x 4 x 5, 64 x 1 x 1 for 3 s; ``global_pool`` (max over
    what remains) -> 64; ``dropout``; ``linear`` -> n_tags.

    Options (the notebook 03 sweep):

    - ``n_blocks``: 4 (Figure 1's layout, 64-128-128-64 with pools (4,4),
      (3,3), (3,3), (2,5)), 5 (Figure 4) or 6 (64-128-128-128-128-64 with
      pools (2,2) x 4, (3,3), (2,3)). Each ends at 64 x 1 x 1 for 3 s.
    - ``residual``: residual blocks (:class:`ResBlock2d`: conv-BN-ReLU-conv-BN
      plus a shortcut, 1x1 conv + BN when the channels change, ReLU) followed
      by the same max pools.
    - ``dropout``: the rate before the last layer (0.5 in Figure 4).

    Shortest input: the product of the time pools in frames (96 frames,
    1.52 s, for 5 blocks; 180 for 4; 144 for 6).
    """

    name = "cnn2d_tuned"
    LAYOUTS: dict[int, tuple[tuple[int, tuple[int, int]], ...]] = {
        4: CNN2D.LAYOUT,
        5: ((64, (2, 2)), (128, (2, 2)), (128, (2, 2)), (128, (3, 4)), (64, (4, 3))),
        6: ((64, (2, 2)), (128, (2, 2)), (128, (2, 2)), (128, (2, 2)), (128, (3, 3)), (64, (2, 3))),
    }

    def __init__(self, n_tags: int = 50, n_blocks: int = 5, residual: bool = False, dropout: float = 0.5) -> None:
        if n_blocks not in self.LAYOUTS:
            raise ValueError(f"cnn2d_tuned n_blocks must be one of {sorted(self.LAYOUTS)}, got {n_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layout = self.LAYOUTS[n_blocks]
        super().__init__(n_tags, n_mels=96, input_samples=THREE_SECONDS,
                         min_frames=_min_frames([p[1] for _, p in layout]))
        self.n_blocks, self.residual = n_blocks, residual
        in_ch = 1
        for i, (out_ch, pool) in enumerate(layout, start=1):
            block = ResBlock2d(in_ch, out_ch, pool=pool) if residual else Conv2dBlock(in_ch, out_ch, pool)
            setattr(self, f"layer{i}", block)
            in_ch = out_ch
        self.global_pool = GlobalPool("max")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_ch, n_tags)
        self.embedding_dim = in_ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_blocks + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.global_pool(x)


# --------------------------------------------------------------------------- state of the art (Question 4)

class CRNN(Classifier):
    """CRNN (Choi et al. 2016) in Won et al.'s version, 96 mels.

    Blocks Conv2d(3x3) -> BN -> ReLU -> MaxPool: ``layer1`` 1->64 pool (2,2),
    ``layer2`` 64->128 (3,3), ``layer3`` 128->128 (4,4), ``layer4`` 128->128
    (4,4), leaving frequency 1: ``(batch, 128, 1, frames // 96)``; ``gru``: a
    2-layer GRU (32 units) over time, its last output -> 32 (the embedding);
    ``dropout``; ``linear`` -> n_tags.

    Trained on the course's 3 s crops (188 frames) the GRU sees a single time
    step; Won et al. trained it on 29.1 s (18 steps). Longer inputs give more
    steps; needs at least 96 frames (24,320 samples, 1.52 s).

    ``width`` multiplies the channels of the convolutions (``width=0.25``:
    16, 32, 32, 32), for training on a CPU in minutes; the GRU keeps 32 units.
    """

    name = "crnn"
    LAYOUT = ((64, (2, 2)), (128, (3, 3)), (128, (4, 4)), (128, (4, 4)))

    def __init__(self, n_tags: int = 50, dropout: float = 0.5, width: float = 1.0) -> None:
        super().__init__(n_tags, n_mels=96, input_samples=THREE_SECONDS,
                         min_frames=_min_frames([p[1] for _, p in self.LAYOUT]))
        self.width = width
        in_ch = 1
        for i, (out_ch, pool) in enumerate(self.LAYOUT, start=1):
            out_ch = scaled_channels(out_ch, width)
            setattr(self, f"layer{i}", Conv2dBlock(in_ch, out_ch, pool))
            in_ch = out_ch
        self.gru = nn.GRU(in_ch, 32, num_layers=2, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(32, n_tags)
        self.embedding_dim = 32

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))   # (batch, 128, 1, steps)
        x = x.squeeze(2).transpose(1, 2)                             # (batch, steps, 128)
        out, _ = self.gru(x)                                         # (batch, steps, 32)
        return out[:, -1]


class Musicnn(Classifier):
    """Musicnn (Pons et al. 2018) in Won et al.'s MTAT version, 96 mels, 3 s.

    ``front_end`` (:class:`MusicnnFrontEnd`): 561 x T; mid end of three
    Conv1d(64, k 7, padding 3) -> BN -> ReLU blocks with residual connections
    (``layer1``; ``layer2`` + layer1; ``layer3`` + layer2), concatenated with
    the front end: 561 + 3 * 64 = 753 x T; ``global_pool`` max and mean over
    time -> 1506; ``dense`` Linear(1506, 200) -> BN -> ReLU (the embedding,
    200); ``dropout`` 0.5; ``linear`` -> n_tags. Accepts any length.

    ``width`` multiplies every channel count (``width=0.25``: timbral 51 + 51,
    temporal 3 x 13, mid end 16, dense 50), for training on a CPU in minutes.
    """

    name = "musicnn"

    def __init__(self, n_tags: int = 50, dropout: float = 0.5, width: float = 1.0) -> None:
        super().__init__(n_tags, n_mels=96, input_samples=THREE_SECONDS)
        self.width = width
        self.front_end = MusicnnFrontEnd(n_mels=96, timbral_channels=scaled_channels(204, width),
                                         temporal_channels=scaled_channels(51, width))
        mid, dense = scaled_channels(64, width), scaled_channels(200, width)
        self.layer1 = Conv1dBlock(self.front_end.out_channels, mid, 7)
        self.layer2 = Conv1dBlock(mid, mid, 7)
        self.layer3 = Conv1dBlock(mid, mid, 7)
        self.global_pool = GlobalPool("max+mean")
        self.dense = nn.Sequential(nn.Linear(2 * (self.front_end.out_channels + 3 * mid), dense),
                                   nn.BatchNorm1d(dense), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dense, n_tags)
        self.embedding_dim = dense

    def features(self, x: torch.Tensor) -> torch.Tensor:
        front = self.front_end(x)                      # (batch, 561, frames)
        res1 = self.layer1(front)
        res2 = self.layer2(res1) + res1
        res3 = self.layer3(res2) + res2
        x = torch.cat([front, res1, res2, res3], dim=1)  # (batch, 753, frames)
        return self.dense(self.global_pool(x))


class ShortChunkCNN(Classifier):
    """Short-chunk CNN (Won et al. 2020): 128 mels, 59,049 samples (3.69 s,
    231 frames).

    Seven Conv2d(3x3) -> BN -> ReLU -> MaxPool(2) blocks ``layer1`` ..
    ``layer7`` with 128, 128, 256, 256, 256, 256, 512 channels (128 x 231 ->
    512 x 1 x 1); ``global_pool`` (max) -> 512; ``dense`` Linear(512, 512)
    -> BN -> ReLU (the embedding); ``dropout`` 0.5; ``linear`` -> n_tags.
    Longer inputs are max-pooled over time; needs at least 128 frames
    (32,512 samples).

    ``width`` multiplies every channel count (``width=0.25``: 32, 32, 64, 64,
    64, 64, 128 and a dense layer of 128), for training on a CPU in minutes.
    """

    name = "short_chunk"
    CHANNELS = (128, 128, 256, 256, 256, 256, 512)

    def __init__(self, n_tags: int = 50, dropout: float = 0.5, width: float = 1.0) -> None:
        super().__init__(n_tags, n_mels=128, input_samples=SHORT_CHUNK, min_frames=2 ** len(self.CHANNELS))
        self.width = width
        in_ch = 1
        for i, out_ch in enumerate(self.CHANNELS, start=1):
            out_ch = scaled_channels(out_ch, width)
            setattr(self, f"layer{i}", self._block(in_ch, out_ch))
            in_ch = out_ch
        dense = scaled_channels(512, width)
        self.global_pool = GlobalPool("max")
        self.dense = nn.Sequential(nn.Linear(in_ch, dense), nn.BatchNorm1d(dense), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dense, n_tags)
        self.embedding_dim = dense

    @staticmethod
    def _block(in_ch: int, out_ch: int) -> nn.Module:
        return Conv2dBlock(in_ch, out_ch, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(self.CHANNELS) + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.dense(self.global_pool(x))


class ShortChunkResCNN(ShortChunkCNN):
    """Short-chunk ResNet (Won et al. 2020): as :class:`ShortChunkCNN` but each
    block is a :class:`ResBlock2d` that halves both axes with stride 2
    (conv3x3/2 - BN - ReLU - conv3x3 - BN, plus a conv3x3/2 + BN shortcut,
    ReLU): 128 x 231 -> 512 x 1 x 2, then max over time. Accepts any length.
    ``width`` multiplies every channel count, as in :class:`ShortChunkCNN`.
    """

    name = "short_chunk_res"

    def __init__(self, n_tags: int = 50, dropout: float = 0.5, width: float = 1.0) -> None:
        super().__init__(n_tags, dropout, width)
        self.min_frames = 1          # stride-2 convolutions round up: never empty

    @staticmethod
    def _block(in_ch: int, out_ch: int) -> nn.Module:
        return ResBlock2d(in_ch, out_ch, stride=2)


# --------------------------------------------------------------------------- metric learning (Question 3)

class LinearProjection(SpectrogramModel):
    """The homework's metric-learning baseline: log-mel ``(batch, 1, 96, 188)``
    -> BN -> flatten (18,048) -> ``projection`` Linear(18,048 -> 4,096).

    ``forward`` and ``embed`` both return the embedding ``(batch,
    embedding_dim)``. Needs exactly 48,000 samples (the flattened size is fixed).
    """

    name = "linear_projection"
    exact_length = True

    def __init__(self, embedding_dim: int = 4096) -> None:
        super().__init__(n_mels=96, input_samples=THREE_SECONDS)
        n_in = self.n_mels * self.spec.n_frames(self.input_samples)
        self.projection = nn.Linear(n_in, embedding_dim)
        self.embedding_dim = embedding_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x.flatten(1))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, 48000)`` -> embedding ``(batch, embedding_dim)``."""
        return self.embed(wav)


# --------------------------------------------------------------------------- building and inspecting

_MODELS: dict[str, type[SpectrogramModel]] = {
    "cnn1d": CNN1D,
    "cnn2d": CNN2D,
    "cnn2d_tuned": TunedCNN2D,
    "crnn": CRNN,
    "musicnn": Musicnn,
    "short_chunk": ShortChunkCNN,
    "short_chunk_res": ShortChunkResCNN,
    "linear_projection": LinearProjection,
}
#: Every name :func:`build_model` knows, in course order.
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def model_options(name: str) -> dict[str, Any]:
    """The options ``build_model(name, ...)`` accepts, with their defaults."""
    cls = _model_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "n_tags")}


def _model_class(name: str) -> type[SpectrogramModel]:
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None


def build_model(name: str, n_tags: int = 50, **options: Any) -> SpectrogramModel:
    """Build a model by name (see :data:`MODEL_NAMES`) with fresh weights.

    Classifiers output logits ``(batch, n_tags)``; ``linear_projection``
    ignores ``n_tags`` and outputs its embedding. ``options`` are the model's
    keyword arguments (see :func:`model_options`): ``cnn2d_tuned`` takes
    ``n_blocks``, ``residual``, ``dropout``; ``crnn``, ``musicnn``,
    ``short_chunk`` and ``short_chunk_res`` take ``dropout`` and ``width`` (a
    channel multiplier, 1.0 = the paper's size; 0.25 trains on a CPU in
    minutes); ``linear_projection`` takes ``embedding_dim``. An unknown name
    or option raises ``ValueError``.
    """
    cls = _model_class(name)
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"{name} has no option {', '.join(map(repr, unknown))}; its options: {listed}")
    if issubclass(cls, Classifier):
        return cls(n_tags=n_tags, **options)
    return cls(**options)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def layer_shapes(model: SpectrogramModel, n_samples: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Output shape of each named block for one clip of ``n_samples`` samples
    (default: the model's ``input_samples``), in the order they run.

    Returns ``[("input", (n_samples,)), ("spec", (1, 96, 188)), ("spec_bn",
    ...), ("layer1", (64, 24, 47)), ..., ("linear", (n_tags,))]``: shapes of
    one clip, without the batch axis (the tables' ``B x``). Recurrent layers
    report their output sequence ``(steps, units)``. Runs one forward pass in
    eval mode without gradients (forward hooks on the direct children).
    """
    n_samples = model.input_samples if n_samples is None else int(n_samples)
    rows: list[tuple[str, tuple[int, ...]]] = [("input", (n_samples,))]

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            rows.append((name, tuple(out.shape[1:])))
        return record

    handles = [child.register_forward_hook(hook(name)) for name, child in model.named_children()]
    was_training = model.training
    try:
        param = next(model.parameters())
        gen = torch.Generator().manual_seed(0)
        wav = (0.1 * torch.randn(1, n_samples, generator=gen)).to(param.device)
        model.eval()
        with torch.no_grad():
            model(wav)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


# --------------------------------------------------------------------------- speed

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp_dtype(device: torch.device, use_amp: bool) -> torch.dtype | None:
    if not use_amp:
        return None
    return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type)


def model_table(names: Sequence[str] = MODEL_NAMES, n_tags: int = 50, device: str | torch.device | None = None,
                batch_size: int = 16, steps: int = 3, warmup: int = 1, use_amp: bool = False,
                progress: bool = False) -> list[dict[str, Any]]:
    """Size and measured speed of each model on ``device``.

    For every name: build the model with default options, then time
    ``steps`` training steps (forward + backward + SGD step on a random
    waveform batch of ``batch_size`` clips of the model's ``input_samples``,
    BCE-with-logits loss on random tags, or the mean squared embedding for
    ``linear_projection``) and ``steps`` inference passes (eval mode,
    ``no_grad``), each after ``warmup`` untimed ones.

    ``device``: default CUDA when available, else CPU. ``use_amp``: autocast
    in float16 on CUDA (with a gradient scaler), bfloat16 on CPU, off
    elsewhere. Training needs ``batch_size >= 2`` (BatchNorm after a dense
    layer).

    Returns one dict per model: ``name``, ``params``, ``input_samples``,
    ``input_seconds``, ``output_shape`` (for ``batch_size`` clips),
    ``embedding_dim``, ``train_clips_per_s``, ``infer_clips_per_s``,
    ``device``, ``batch_size``, ``amp`` (the autocast dtype name or
    ``None``). Render it with :func:`format_table`.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm in training), got {batch_size}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for name in names:
        _model_class(name)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = _amp_dtype(device, use_amp)
    from .train import optimizer_step         # train imports models lazily too: no import cycle

    autocast = ((lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None
                else nullcontext)
    iterator: Any = names
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(names, desc="models")

    rows = []
    gen = torch.Generator().manual_seed(0)
    for name in iterator:
        model = build_model(name, n_tags=n_tags).to(device)
        wav = (0.1 * torch.randn(batch_size, model.input_samples, generator=gen)).to(device)
        target = torch.randint(0, 2, (batch_size, n_tags), generator=gen).float().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        criterion = nn.BCEWithLogitsLoss()

        def train_step() -> None:
            with autocast():
                out = model(wav)
            out = out.float()
            optimizer_step(criterion(out, target) if isinstance(model, Classifier) else out.square().mean(),
                           optimizer, scaler)

        def infer_step() -> torch.Tensor:
            with torch.no_grad(), autocast():
                return model(wav)

        model.train()
        train_s = _timed(train_step, steps, warmup, device)
        model.eval()
        out = infer_step()
        infer_s = _timed(infer_step, steps, warmup, device)
        rows.append({
            "name": name,
            "params": count_parameters(model),
            "input_samples": model.input_samples,
            "input_seconds": model.input_seconds,
            "output_shape": tuple(out.shape),
            "embedding_dim": model.embedding_dim,
            "train_clips_per_s": steps * batch_size / train_s,
            "infer_clips_per_s": steps * batch_size / infer_s,
            "device": str(device),
            "batch_size": batch_size,
            "amp": None if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
        })
        del model, optimizer, wav, target, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _timed(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds taken by ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return max(time.perf_counter() - start, 1e-9)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render :func:`model_table` rows as a plain-text table."""
    header = ("model", "params", "input", "seconds", "output", "embedding", "train clips/s", "infer clips/s")
    lines = [header]
    for r in rows:
        lines.append((r["name"], f"{r['params']:,}", f"{r['input_samples']:,}", f"{r['input_seconds']:.2f}",
                      " x ".join(map(str, r["output_shape"])), str(r["embedding_dim"]),
                      f"{r['train_clips_per_s']:.1f}", f"{r['infer_clips_per_s']:.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = [str.ljust] + [str.rjust] * (len(header) - 1)
    text = ["  ".join(f(cell, w) for f, cell, w in zip(fmt, line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
