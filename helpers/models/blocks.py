"""Building blocks of the course's models, and the two base classes every
model derives from.

Blocks (each docstring gives its input and output shapes):
:class:`Conv1dBlock`, :class:`Conv2dBlock`, :class:`ResBlock2d`,
:class:`GlobalPool`, and musicnn's :class:`TimbralBranch`,
:class:`TemporalBranch` and :class:`MusicnnFrontEnd`; :func:`max_after_bn`,
how musicnn's filters pool over frequency before normalising in evaluation,
and :func:`conv2d_by_shifts`, how their one-channel convolutions run fast.

Base classes: :class:`SpectrogramModel` (waveform checks, the log-mel front
end, ``embed``) and :class:`Classifier` (a tagger: ``linear(dropout(embed))``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..audio import LogMelSpectrogram
from ..config import SAMPLE_RATE

__all__ = ["THREE_SECONDS", "SHORT_CHUNK", "Conv1dBlock", "Conv2dBlock", "ResBlock2d", "GlobalPool",
           "TimbralBranch", "TemporalBranch", "MusicnnFrontEnd", "SpectrogramModel", "Classifier",
           "scaled_channels", "min_frames", "max_after_bn", "conv2d_by_shifts", "gradient_flows"]

#: Samples in a 3 s training crop at 16 kHz (the homework's models).
THREE_SECONDS = 3 * SAMPLE_RATE
#: Samples in a short-chunk training crop (3^10, 3.69 s at 16 kHz).
SHORT_CHUNK = 59049


# --------------------------------------------------------------------------- blocks

def conv2d_by_shifts(x: torch.Tensor, conv: nn.Conv2d, dim: int) -> torch.Tensor:
    """``conv(x)`` for a one-channel ``x``, computed as a convolution of ``k``
    shifted copies of ``x`` (``k``: the kernel's size along ``dim``, 2 or 3)
    with filters of size 1 along ``dim``: the same numbers.

    oneDNN's backward pass of a convolution is slow when it has a single
    input channel: for musicnn's timbral filters (7 frames x 38 or 67 bands)
    a training step of the filters takes 2.5-4 times longer as a plain
    ``conv(x)`` than on the 7 shifted copies. (Without gradients the plain
    convolution is faster: :func:`gradient_flows` tells which to use.)
    ``x``: ``(batch, 1, H, W)``; ``conv``: one input channel, stride and
    dilation 1; returns ``(batch, out_channels, H', W')`` as ``conv(x)``.
    """
    if conv.in_channels != 1 or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError("conv2d_by_shifts takes a convolution of one input channel, stride 1, dilation 1")
    axis = dim - 2                                            # 0: height, 1: width
    k, pad = conv.kernel_size[axis], conv.padding[axis]
    if pad:
        x = nn.functional.pad(x, (pad, pad) if axis == 1 else (0, 0, pad, pad))
    copies = x[:, 0].unfold(axis + 1, k, 1).movedim(-1, 1).contiguous()   # (batch, k, H', W) or (batch, k, H, W')
    other_pad = (conv.padding[0], 0) if axis == 1 else (0, conv.padding[1])
    return nn.functional.conv2d(copies, conv.weight.transpose(1, dim), conv.bias, padding=other_pad)


def gradient_flows(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether a backward pass will go through ``module`` applied to ``x``:
    gradients are recorded and ``x`` or one of ``module``'s parameters needs one."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def max_after_bn(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, layers: Callable[[torch.Tensor], torch.Tensor],
                 dim: int) -> torch.Tensor:
    """``layers(x).max(dim)``, where ``layers`` is the batch norm ``bn`` and a
    ReLU in either order (musicnn's filters, then their maximum over frequency).

    In training, batch norm needs the statistics of all of ``x``; the maximum
    is ``Tensor.max``, whose backward sends each gradient to the one value
    that won (``amax`` compares every value with the maximum again: 2-3
    times slower). In evaluation batch norm is, per channel, the map ``x *
    scale + shift`` with a scale of the sign of the channel's weight, and
    ReLU never decreases: ``layers`` is monotone per channel, so it commutes
    with the maximum, ``max layers(x) = layers(max x)`` on channels of weight
    >= 0 and ``layers(min x)`` on the others. Pooling first gives the same
    numbers (up to rounding) with ``x.shape[dim]`` times fewer values to
    normalise: 30 or 59 times for :class:`TimbralBranch`'s filters of 67 and
    38 bands. (Pons's musicnn, :meth:`helpers.models.pons.ReluBatchNorm2d.max_over`,
    goes further: it never computes the whole convolution.)
    ``x``: ``(batch, channels, ...)``; returns it without ``dim``.
    """
    if bn.training or bn.running_var is None:            # batch statistics: every value counts
        return layers(x).max(dim=dim).values
    pooled = x.amax(dim=dim, keepdim=True)
    decreasing = None if bn.weight is None else bn.weight < 0          # no weight: a positive scale
    if decreasing is not None and decreasing.any():
        pooled = torch.where(decreasing.view(-1, *([1] * (x.dim() - 2))), x.amin(dim=dim, keepdim=True), pooled)
    return layers(pooled).squeeze(dim)


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
    width), padding (0, width // 2)) -> BN -> ReLU``, then max over frequency
    (in evaluation the max comes first: the same numbers, :func:`max_after_bn`).
    In training the convolution runs on ``width`` shifted copies of the input
    (:func:`conv2d_by_shifts`: the same numbers, a faster backward).

    ``(batch, 1, n_mels, time) -> (batch, channels, time)``.
    """

    def __init__(self, channels: int, height: int, width: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, (height, width), padding=(0, width // 2))
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = conv2d_by_shifts(x, self.conv, dim=3) if gradient_flows(x, self.conv) else self.conv(x)
        return max_after_bn(h, self.bn, lambda h: self.relu(self.bn(h)), dim=2)


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
    #: Whether the channels-last memory layout speeds the model's 2D
    #: convolutions up (:func:`helpers.train.fast_layout`; measured with
    #: ``benchmarks/bench_cpu_speed.py``).
    channels_last_helps: bool = True

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

    def new_tag_layer(self, n_tags: int) -> "Classifier":
        """Replace the last layer by a freshly initialised one for ``n_tags``
        tags (transfer learning: keep what the model learned, predict other
        tags); returns the model."""
        if n_tags < 1:
            raise ValueError(f"n_tags must be at least 1, got {n_tags}")
        old = self.linear
        self.linear = nn.Linear(old.in_features, n_tags).to(old.weight.device)
        self.n_tags = n_tags
        return self

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, samples)`` at 16 kHz -> logits ``(batch, n_tags)``."""
        z = self.embed(wav)
        if self.dropout is not None:
            z = self.dropout(z)
        return self.linear(z)


def min_frames(time_pools: Sequence[int]) -> int:
    """Fewest frames that survive max pools of these kernels along time
    (each ``floor(t / k)`` must stay >= 1)."""
    return math.prod(time_pools)


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest integer (at least 1): the
    channel count of a layer in a model built with the ``width`` option."""
    if not (isinstance(width, (int, float)) and 0 < width <= 4):
        raise ValueError(f"width must be a channel multiplier in (0, 4], e.g. 0.25 or 1.0, got {width!r}")
    return max(1, int(round(channels * width)))
