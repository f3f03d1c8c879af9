"""The state-of-the-art taggers of Question 4, as Won et al. (2020) evaluated
them on MagnaTagATune: :class:`CRNN`, :class:`Musicnn`, :class:`ShortChunkCNN`
and :class:`ShortChunkResCNN`. Each takes a ``width`` option, a channel
multiplier (1.0: the paper's model).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import SHORT_CHUNK, THREE_SECONDS, Classifier, Conv1dBlock, Conv2dBlock, GlobalPool, MusicnnFrontEnd, \
    ResBlock2d, min_frames, scaled_channels

__all__ = ["WON_CRNN_SAMPLES", "CRNN", "Musicnn", "ShortChunkCNN", "ShortChunkResCNN"]


#: Won et al.'s CRNN input: 29.1 s at 16 kHz (1,819 frames, 18 steps for the GRU).
WON_CRNN_SAMPLES = 465_600


class CRNN(Classifier):
    """CRNN (Choi et al. 2016) in Won et al.'s version, 96 mels.

    Blocks Conv2d(3x3) -> BN -> ReLU -> MaxPool: ``layer1`` 1->64 pool (2,2),
    ``layer2`` 64->128 (3,3), ``layer3`` 128->128 (4,4), ``layer4`` 128->128
    (4,4), leaving frequency 1: ``(batch, 128, 1, frames // 96)``; ``gru``: a
    2-layer GRU (32 units) over time, its last output -> 32 (the embedding);
    ``dropout``; ``linear`` -> n_tags.

    Trained on the course's 3 s crops (188 frames) the GRU sees a single time
    step; Won et al. trained it on 29.1 s (:data:`WON_CRNN_SAMPLES`, 18
    steps). ``input_samples`` sets the length of its training crops and
    evaluation chunks (default 3 s); it needs at least 96 frames (24,320
    samples, 1.52 s).

    ``width`` multiplies the channels of the convolutions (``width=0.25``:
    16, 32, 32, 32), for training on a CPU in minutes; the GRU keeps 32 units.
    """

    name = "crnn"
    LAYOUT = ((64, (2, 2)), (128, (3, 3)), (128, (4, 4)), (128, (4, 4)))

    def __init__(self, n_tags: int = 50, dropout: float = 0.5, width: float = 1.0,
                 input_samples: int = THREE_SECONDS) -> None:
        super().__init__(n_tags, n_mels=96, input_samples=int(input_samples),
                         min_frames=min_frames([p[1] for _, p in self.LAYOUT]))
        self.width = width
        if self.input_samples < self.min_samples:
            raise ValueError(f"crnn needs input_samples of at least {self.min_samples} (96 frames), "
                             f"got {self.input_samples}")
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
    channels_last_helps = False      # its tall one-channel filters train at half speed in that layout (2 CPU cores)

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
