"""Pons et al.'s published taggers, layer for layer: the models inside the
``musicnn`` package (``MTT_musicnn``, ``MSD_musicnn``: "musicnn"; ``MTT_vgg``,
``MSD_vgg``: its VGG baseline), written so that their TensorFlow weights load
unchanged (:mod:`helpers.prepare.musicnn` converts them).

They differ from the course's :class:`~helpers.models.sota.Musicnn` (Won et
al.'s re-implementation) in what a port must reproduce exactly:

- the input: musicnn's own front end, librosa's mel spectrogram (Slaney
  scale and normalisation) compressed with ``log10(1 + 10000 x)``, in
  patches of 187 frames (3 s);
- TensorFlow's ``same`` padding, which for an even kernel ``k`` pads ``k / 2 -
  1`` frames before and ``k / 2`` after (PyTorch's ``padding="same"`` does the
  reverse);
- every convolution and dense layer is followed by its ReLU, *then* batch
  normalisation (epsilon 1e-3, TensorFlow's default);
- the back end flattens ``(753 channels, [max, mean])``: max and mean of
  each channel side by side, 1,506 values.

Shapes below are of one patch: ``T`` = 187 frames, 96 mel bands.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..audio import LogMelSpectrogram
from ..config import SAMPLE_RATE
from .blocks import Classifier, conv2d_by_shifts, gradient_flows

__all__ = ["PATCH_FRAMES", "PATCH_SAMPLES", "tf_same_padding", "musicnn_front_end", "ReluBatchNorm2d",
           "TimbralFilters", "TemporalFilters", "MidEndLayer", "PonsModel", "PonsMusicnn", "PonsVGG"]

#: musicnn's patch: 187 spectrogram frames, hop 256 at 16 kHz (about 3 s).
PATCH_FRAMES = 187
#: The shortest waveform that gives one patch: ``(187 - 1) * 256`` samples (centred frames).
PATCH_SAMPLES = (PATCH_FRAMES - 1) * 256
TF_BN_EPS = 1e-3


def tf_same_padding(kernel: int) -> tuple[int, int]:
    """Frames TensorFlow's ``same`` padding adds (before, after) for a kernel of ``kernel``."""
    return (kernel - 1) // 2, kernel // 2


#: Examples per piece when musicnn's filters and their maximum over frequency
#: run piece by piece in evaluation (:meth:`ReluBatchNorm2d.max_over`).
EXAMPLES_PER_PIECE = 2


class ReluBatchNorm2d(nn.Module):
    """Conv2d -> ReLU -> BatchNorm2d (eps 1e-3): TensorFlow's
    ``conv2d(activation=relu)`` followed by ``batch_normalization``.
    ``shifts_dim`` (2 or 3, for one input channel): in training the
    convolution runs on shifted copies of the input along that axis
    (:func:`~.blocks.conv2d_by_shifts`: the same numbers, a faster backward)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int],
                 shifts_dim: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel)
        self.bn = nn.BatchNorm2d(out_channels, eps=TF_BN_EPS)
        self.shifts_dim = shifts_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        by_shifts = self.shifts_dim is not None and gradient_flows(x, self.conv)
        h = conv2d_by_shifts(x, self.conv, self.shifts_dim) if by_shifts else self.conv(x)
        return self.bn(F.relu(h))

    def max_over(self, x: torch.Tensor, dim: int,
                 conv_max: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``self(x).max(dim)``: ``(batch, C, T, 96) -> (batch, C, T)`` for ``dim=3``.

        In training every value of the convolution's output counts (batch
        norm's statistics, the gradients; ``Tensor.max``, as in
        :func:`~.blocks.max_after_bn`). In evaluation without gradients,
        ReLU and batch norm are monotone per channel and commute with the
        maximum (:func:`~.blocks.max_after_bn`): only the convolution's
        maxima over frequency are needed, its minima on the channels of
        negative batch-norm weight, which are the maxima of the negated
        filters. ``conv_max(x, weight, bias)`` computes them a few examples at
        a time: the whole output never exists (for musicnn's 38-band filters,
        144 M values for a batch of 64 patches), so each piece stays in the
        processor's cache, 2-5 times faster; the same numbers up to rounding.
        """
        if self.bn.training or gradient_flows(x, self.conv):
            return self(x).max(dim=dim).values
        sign = torch.ones_like(self.conv.bias) if self.bn.weight is None else \
            torch.where(self.bn.weight < 0, -1.0, 1.0)         # -1: batch norm decreasing, take the minimum
        weight, bias = self.conv.weight * sign.view(-1, 1, 1, 1), self.conv.bias * sign
        peaks = torch.cat([conv_max(piece, weight, bias) for piece in x.split(EXAMPLES_PER_PIECE)])
        return self.bn(F.relu(peaks * sign.view(-1, 1)).unsqueeze(dim)).squeeze(dim)


def _in_autocast_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` in the dtype of the mixed precision in force (unchanged
    without it): the same numbers as the casts autocast makes inside a
    convolution or matrix product, made once on a small input instead of on
    the copies made of it (20 % faster evaluation of musicnn in bfloat16)."""
    kind = tensors[0].device.type
    if not torch.is_autocast_enabled(kind):
        return tensors
    return tuple(t.to(torch.get_autocast_dtype(kind)) for t in tensors)


def timbral_conv_max(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv2d(x, weight, bias).amax(dim=3)`` as one matrix product: every
    window of ``x`` (``kt`` frames x ``kf`` bands) against every filter.
    ``x``: ``(batch, 1, T + kt - 1, 96)``, ``weight``: ``(C, 1, kt, kf)``;
    returns ``(batch, C, T)``."""
    channels, _, kt, kf = weight.shape
    x, weight, bias = _in_autocast_dtype(x, weight, bias)             # the input cast once, not its many windows
    windows = x[:, 0].unfold(1, kt, 1).unfold(2, kf, 1)                # (batch, T, 96 - kf + 1, kt, kf)
    out = F.linear(windows.reshape(*windows.shape[:3], kt * kf), weight.reshape(channels, kt * kf), bias)
    return out.amax(dim=2).transpose(1, 2)                             # max over frequency


def temporal_conv_max(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv2d(x, weight, bias).amax(dim=3)`` for filters of one band: a 1D
    convolution over time of every band, the bands side by side in the
    batch. ``x``: ``(batch, 1, T + length - 1, 96)``, ``weight``: ``(C, 1,
    length, 1)``; returns ``(batch, C, T)``."""
    batch, _, frames, bands = x.shape
    x, weight, bias = _in_autocast_dtype(x, weight, bias)             # cast once, before it is rearranged
    out = F.conv1d(x[:, 0].transpose(1, 2).reshape(batch * bands, 1, frames), weight[..., 0], bias)
    return out.view(batch, bands, *out.shape[1:]).amax(dim=1)          # max over frequency


class TimbralFilters(nn.Module):
    """A timbral branch of musicnn: ``channels`` filters of 7 frames x
    ``span`` mel bands (zero-padded 3 frames each side in time, none in
    frequency), ReLU, BN, then the maximum over frequency:
    ``(batch, 1, T, 96) -> (batch, channels, T)``. In training the
    convolution runs on 7 copies of the input shifted in time."""

    def __init__(self, channels: int, span: int) -> None:
        super().__init__()
        self.filters = ReluBatchNorm2d(1, channels, (7, span), shifts_dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.filters.max_over(F.pad(x, (0, 0, 3, 3)), 3, timbral_conv_max)


class TemporalFilters(nn.Module):
    """A temporal branch of musicnn: ``channels`` filters of ``length`` frames
    x 1 band with TensorFlow's ``same`` padding in time, ReLU, BN, then the
    maximum over frequency: ``(batch, 1, T, 96) -> (batch, channels, T)``."""

    def __init__(self, channels: int, length: int) -> None:
        super().__init__()
        self.padding = tf_same_padding(length)
        self.filters = ReluBatchNorm2d(1, channels, (length, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.filters.max_over(F.pad(x, (0, 0, *self.padding)), 3, temporal_conv_max)


class MidEndLayer(nn.Module):
    """One mid-end layer: ``channels`` filters spanning all input channels
    and 7 frames (TensorFlow writes it as a 2D convolution over (time,
    channel)), ReLU, BN: ``(batch, in_channels, T) -> (batch, channels, T)``."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, channels, 7, padding=3)
        self.bn = nn.BatchNorm1d(channels, eps=TF_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


def musicnn_front_end(n_mels: int = 96) -> LogMelSpectrogram:
    """musicnn's input: librosa's mel spectrogram at 16 kHz (n_fft 512, hop
    256, Slaney mel scale and normalisation, 0 to 8 kHz), ``log10(1 + 10000 x)``."""
    return LogMelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=256, f_min=0.0, f_max=8000.0,
                             n_mels=n_mels, mel_scale="slaney", norm="slaney", log="log1p")


class PonsModel(Classifier):
    """Base of Pons's models: musicnn's front end, input batch norm with
    TensorFlow's epsilon, 187-frame patches (:data:`PATCH_SAMPLES`).
    :class:`helpers.tagging.Tagger` cuts the spectrogram of a whole file
    into ``patch_frames`` patches, as musicnn does."""

    patch_frames = PATCH_FRAMES

    def __init__(self, n_tags: int, min_frames: int = 1) -> None:
        super().__init__(n_tags, n_mels=96, input_samples=PATCH_SAMPLES, min_frames=min_frames)
        self.spec = musicnn_front_end()
        self.spec_bn = nn.BatchNorm2d(1, eps=TF_BN_EPS)


class PonsMusicnn(PonsModel):
    """musicnn (Pons et al. 2019), the models ``MTT_musicnn`` and ``MSD_musicnn``.

    Front end on the ``(T, 96)`` log-mel: ``timbral`` 204 filters of 7 x 38
    and 204 of 7 x 67 bands (40 % and 70 % of the mel axis), ``temporal`` 51
    filters each of 128, 64 and 32 frames, every branch max-pooled over
    frequency and concatenated: 561 x T. Mid end: ``layer1`` 64 filters of 7
    frames over the 561 channels; ``layer2``, ``layer3`` the same over 64, with
    residual connections; concatenated with the front end: 753 x T. Back end:
    max and mean over time (1,506), ``pool_bn``, dropout 0.5, ``dense`` 200
    -> ReLU -> ``dense_bn`` (the embedding, musicnn's "penultimate"),
    dropout 0.5, ``linear`` -> n_tags. Accepts any length.
    """

    name = "musicnn_pons"
    channels_last_helps = False      # as Musicnn's (helpers.models.sota)

    def __init__(self, n_tags: int = 50) -> None:
        super().__init__(n_tags)
        self.timbral = nn.ModuleList([TimbralFilters(204, 38), TimbralFilters(204, 67)])
        self.temporal = nn.ModuleList([TemporalFilters(51, length) for length in (128, 64, 32)])
        self.layer1 = MidEndLayer(561, 64)
        self.layer2 = MidEndLayer(64, 64)
        self.layer3 = MidEndLayer(64, 64)
        self.pool_bn = nn.BatchNorm1d(2 * 753, eps=TF_BN_EPS)
        self.pool_dropout = nn.Dropout(0.5)
        self.dense = nn.Linear(2 * 753, 200)
        self.dense_bn = nn.BatchNorm1d(200, eps=TF_BN_EPS)
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(200, n_tags)
        self.embedding_dim = 200

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(2, 3)                                          # (batch, 1, T, 96): TensorFlow's layout
        front = torch.cat([branch(x) for branch in (*self.timbral, *self.temporal)], dim=1)   # (batch, 561, T)
        res1 = self.layer1(front)
        res2 = self.layer2(res1) + res1
        res3 = self.layer3(res2) + res2
        h = torch.cat([front, res1, res2, res3], dim=1)               # (batch, 753, T)
        pooled = torch.stack([h.amax(dim=2), h.mean(dim=2)], dim=2).flatten(1)   # max_c, mean_c, ...: 1,506
        return self.dense_bn(F.relu(self.dense(self.pool_dropout(self.pool_bn(pooled)))))


class PonsVGG(PonsModel):
    """musicnn's VGG baseline, the models ``MTT_vgg`` and ``MSD_vgg``: five
    blocks of 128 filters 3 x 3 (``same``) -> ReLU -> BN -> max pool (4 x 1
    with stride 2, then 2 x 2 three times, then 4 x 4), dropout 0.25 after
    each of the first four pools; flattened as TensorFlow does (time,
    frequency, channel: 2 x 1 x 128 for a 187-frame patch), dropout 0.5,
    ``linear`` -> n_tags. Takes exactly one patch of 187 frames; its
    embedding is the flattened pool5 (256 values).
    """

    name = "vgg_pons"
    POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4)))

    def __init__(self, n_tags: int = 50) -> None:
        super().__init__(n_tags)
        self.exact_length = True
        channels = 1
        for k, (pool, stride) in enumerate(self.POOLS, 1):
            block = nn.Sequential(nn.Conv2d(channels, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128, eps=TF_BN_EPS),
                                  nn.MaxPool2d(pool, stride))
            setattr(self, f"layer{k}", block)
            channels = 128
        self.block_dropout = nn.Dropout(0.25)
        self.dropout = nn.Dropout(0.5)
        self.embedding_dim = 256
        self.linear = nn.Linear(256, n_tags)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(2, 3)                                          # (batch, 1, T, 96)
        for k in range(1, 6):
            x = getattr(self, f"layer{k}")(x)
            if k < 5:
                x = self.block_dropout(x)
        return x.permute(0, 2, 3, 1).flatten(1)                        # TensorFlow's (time, frequency, channel)
