"""The homework's models (KAIST GCT634 HW2), as its tables give them.

- :class:`CNN1D`: the given 1D CNN baseline;
- :class:`CNN2D`: Question 1, the 2D CNN of Figure 1;
- :class:`TunedCNN2D`: Question 2, the report's Figure 4, with the tuning options;
- :class:`LinearProjection`: Question 3, the metric-learning baseline.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import THREE_SECONDS, Classifier, Conv1dBlock, Conv2dBlock, GlobalPool, ResBlock2d, SpectrogramModel, \
    min_frames

__all__ = ["CNN1D", "CNN2D", "TunedCNN2D", "LinearProjection"]


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
                         min_frames=min_frames([p[1] for _, p in self.LAYOUT]))
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
                         min_frames=min_frames([p[1] for _, p in layout]))
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
