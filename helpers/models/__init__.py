"""Every model of the course, built from a few named blocks, and the one
registry that builds them by name (:func:`build_model`).

The package reads like the papers' tables: ``blocks`` holds the building
blocks and the base classes, ``homework`` the homework's models, ``sota`` the
state-of-the-art taggers, ``pons`` Pons's published musicnn models; each model is a sequence of named blocks
(``layer1`` .. ``layerN``) with the table's sizes, so that ``print(model)``
reads like the homework's printouts.

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
- ``musicnn_pons``, ``vgg_pons`` (``pons``): Pons's published musicnn and VGG, layer for layer, to
  load musicnn's trained weights (``python -m helpers tag`` does); musicnn's own front end
  (Slaney mel, ``log10(1 + 10000 x)``), 187-frame patches (47,616 samples); VGG exactly one patch.

The four state-of-the-art models (``crnn``, ``musicnn``, ``short_chunk``,
``short_chunk_res``) take a ``width`` option, a channel multiplier: 1.0 (the
default) is the paper's model; the course's ``cpu`` profile trains them at
``width=0.25`` (about 1/16 of the convolution cost), labelled as such.

Each model's ``min_samples`` gives its shortest input ("any length" above:
at least 257 samples, the front end's minimum); a shorter one, or a batch of
the wrong rank, raises a ``ValueError`` naming the expected shape.

Build a model with :func:`build_model`, print its per-block output shapes with
:func:`layer_shapes`; ``benchmarks/bench_models.py`` measures their speed.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from .blocks import (SHORT_CHUNK, THREE_SECONDS, Classifier, Conv1dBlock, Conv2dBlock, GlobalPool, MusicnnFrontEnd,
                     ResBlock2d, SpectrogramModel, TemporalBranch, TimbralBranch, scaled_channels)
from .homework import CNN1D, CNN2D, LinearProjection, TunedCNN2D
from .pons import PonsMusicnn, PonsVGG
from .sota import CRNN, Musicnn, ShortChunkCNN, ShortChunkResCNN

__all__ = [
    "MODEL_NAMES", "PORTED_MODEL_NAMES", "build_model", "model_options", "layer_shapes", "count_parameters",
    "scaled_channels",
    "THREE_SECONDS", "SHORT_CHUNK",
    "Conv1dBlock", "Conv2dBlock", "ResBlock2d", "GlobalPool", "TimbralBranch", "TemporalBranch",
    "MusicnnFrontEnd", "SpectrogramModel", "Classifier", "CNN1D", "CNN2D", "TunedCNN2D", "CRNN",
    "Musicnn", "ShortChunkCNN", "ShortChunkResCNN", "LinearProjection", "PonsMusicnn", "PonsVGG",
]

_MODELS: dict[str, type[SpectrogramModel]] = {
    "cnn1d": CNN1D,
    "cnn2d": CNN2D,
    "cnn2d_tuned": TunedCNN2D,
    "crnn": CRNN,
    "musicnn": Musicnn,
    "short_chunk": ShortChunkCNN,
    "short_chunk_res": ShortChunkResCNN,
    "linear_projection": LinearProjection,
    "musicnn_pons": PonsMusicnn,
    "vgg_pons": PonsVGG,
}
#: Pons's published models (:mod:`.pons`): built to load musicnn's trained weights, not trained by the course.
PORTED_MODEL_NAMES: tuple[str, ...] = ("musicnn_pons", "vgg_pons")
#: The models the course trains, in course order (:func:`build_model` also knows :data:`PORTED_MODEL_NAMES`).
MODEL_NAMES: tuple[str, ...] = tuple(name for name in _MODELS if name not in PORTED_MODEL_NAMES)


def model_options(name: str) -> dict[str, Any]:
    """The options ``build_model(name, ...)`` accepts, with their defaults."""
    cls = _model_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "n_tags")}


def _model_class(name: str) -> type[SpectrogramModel]:
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        names = ", ".join(MODEL_NAMES + PORTED_MODEL_NAMES)
        raise ValueError(f"unknown model {name!r}; valid names: {names}") from None


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
