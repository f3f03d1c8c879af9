"""Training and evaluation of taggers: recipes, mixed precision, checkpoints,
chunk-averaged prediction and the training loop.

The homework's recipe is :data:`HOMEWORK_RECIPE` (SGD with Nesterov momentum,
ReduceLROnPlateau on the validation loss, stop when the learning rate falls
below 1e-5). :func:`fit` trains any classifier of :mod:`helpers.models` with
``BCEWithLogitsLoss`` on random crops, evaluates every epoch on all chunks of
the validation clips, keeps the best model by validation loss, saves
checkpoints atomically, resumes an interrupted run exactly, and stops with a
clear message when the loss becomes NaN. :func:`train_epochs` is that loop;
:mod:`helpers.retrieval` trains embedders with it too.

Predictions are made per chunk and averaged per clip (:func:`predict`,
:func:`embed_clips`); :func:`evaluate` scores them. :func:`fit_logistic_probe`
fits a linear model per tag on fixed features (a linear probe of a
pretrained model's embeddings, a classical baseline).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator, NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .audio import LogMelSpectrogram
from .config import PROFILES, atomic_write, choose_device, choose_fast_paths, choose_profile, tqdm
from .data import ChunkDataset, RandomCropDataset, TaggedAudio, clip_songs
from .metrics import TaggingScores, tagging_scores
from .models import build_model

__all__ = ["CHECKPOINT_FORMAT", "TrainingDivergedError", "seed_everything", "Recipe", "HOMEWORK_RECIPE",
           "WON2020_RECIPE", "RECIPES",
           "cpu_has_native_bfloat16", "amp_dtype", "autocast", "describe_fast_paths", "fast_layout", "grad_scaler", "optimizer_step", "make_optimizer",
           "save_checkpoint", "model_checkpoint", "load_checkpoint",
           "ClipOutputs", "predict", "embed_clips", "embedding_of", "EMBEDDING_LAYERS", "evaluate",
           "EpochRecord", "History", "kept_value", "best_on_validation", "BatchLoss", "data_fingerprint", "architecture_fingerprint", "run_identity",
           "RunCheckpoints", "train_epochs", "training_loader", "TrainingTime", "format_duration",
           "estimate_training_time", "train_mode", "fit", "LogisticProbe", "log_mel_statistics",
           "fit_logistic_probe"]

#: Version of what the course's checkpoints hold. 2 added the random states
#: of a resumable run (``last.pt``); model checkpoints of version 1 hold the
#: same fields as today's and still load.
CHECKPOINT_FORMAT = 2
READABLE_MODEL_FORMATS = (1, 2)


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (every device); returns a seeded
    ``torch.Generator`` for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------

@dataclass
class Recipe:
    """How to train: optimiser, schedule, stopping rules and batch sizes.

    ``max_batches`` caps the batches per epoch (the ``ci`` profile);
    ``early_stopping`` stops after that many epochs without a better
    validation score; training also stops when the learning rate falls below
    ``min_lr``.

    ``amp`` and ``channels_last``, the processor's fast paths: mixed
    precision where the hardware computes it natively (:func:`amp_dtype`),
    and the channels-last memory layout for 2D convolutions
    (:func:`fast_layout`). A bare recipe has neither (plain float32); every
    profile turns both on (:meth:`for_profile`), and ``$COURSE_FAST_PATHS=0``
    turns both off.

    ``schedule``: ``"plateau"`` (the homework's: the learning rate times
    ``plateau_factor`` after ``plateau_patience`` epochs without a better
    validation score) or ``"won2020"`` (Won et al. 2020, :data:`WON2020_RECIPE`):
    the recipe's optimiser until epoch ``switch_epoch``; then the best model so
    far is reloaded and training goes on with SGD (Nesterov momentum
    ``momentum``, learning rate ``switch_lr``, the recipe's weight decay),
    the learning rate divided by 10 every ``drop_every`` epochs, ``drops``
    times.
    """

    optimizer: str = "sgd"            # 'sgd' (Nesterov momentum) or 'adam'
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 10
    plateau_factor: float = 0.2
    plateau_patience: int = 5
    min_lr: float = 1e-5
    early_stopping: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    max_batches: int | None = None
    num_workers: int = 0
    amp: bool = False
    channels_last: bool = False
    seed: int = 0
    schedule: str = "plateau"         # 'plateau' or 'won2020'
    switch_epoch: int = 80
    switch_lr: float = 1e-3
    drop_every: int = 20
    drops: int = 2

    #: Fields that may change between two calls of one run: more epochs extend a
    #: run that ran out of epochs. (The worker count is not one of them: crops
    #: draw from the main process's random stream without workers and from each
    #: worker's with them, so it changes the result.)
    EXTENDABLE: ClassVar[tuple[str, ...]] = ("epochs",)

    def for_profile(self, profile: str, **changes: Any) -> "Recipe":
        """This recipe with the epochs, batch caps and workers of a profile,
        and the processor's fast paths (``amp``, ``channels_last``) unless
        ``$COURSE_FAST_PATHS`` turns them off (:func:`helpers.config.choose_fast_paths`)."""
        profile = choose_profile(profile)
        fast = choose_fast_paths()
        settings = {**PROFILES[profile], "amp": fast, "channels_last": fast}
        return replace(self, **{**settings, **changes})

    def __repr__(self) -> str:
        """The fields that matter for this recipe: those of its schedule only."""
        shown = set(self.identity()) | set(self.EXTENDABLE)
        return f"Recipe({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in fields(self) if f.name in shown)})"


    def identity(self) -> dict[str, Any]:
        """The fields that identify a run trained with this recipe (all but
        :attr:`EXTENDABLE`, and the switch settings of a schedule without a
        switch)."""
        values = {k: v for k, v in asdict(self).items() if k not in self.EXTENDABLE}
        if self.schedule == "plateau":
            for k in ("schedule", "switch_epoch", "switch_lr", "drop_every", "drops"):
                values.pop(k)
        return values

    def lr_at(self, epoch: int) -> float | None:
        """The learning rate the ``won2020`` schedule sets at the start of
        ``epoch`` (1-based): ``switch_lr`` at ``switch_epoch + 1``, ten times
        less every ``drop_every`` epochs after, ``drops`` times; ``None`` where
        it sets nothing (before the switch, and always for ``plateau``)."""
        if self.schedule != "won2020" or epoch <= self.switch_epoch:
            return None
        k = (epoch - self.switch_epoch - 1) // self.drop_every
        return self.switch_lr / 10 ** min(k, self.drops)


#: The homework's recipe: SGD(lr 1e-3, momentum 0.9, Nesterov), ReduceLROnPlateau
#: (factor 0.2, patience 5) on the validation loss, stop below lr 1e-5, 10 epochs.
HOMEWORK_RECIPE = Recipe()

#: Won et al.'s recipe (2020, ``minzwon/sota-music-tagging-models``): batch 16,
#: Adam (lr 1e-4, weight decay 1e-4) for 80 epochs; then the best model is
#: reloaded and SGD takes over (lr 1e-3, Nesterov momentum 0.9, weight decay
#: 1e-4), lr 1e-4 from epoch 101 and 1e-5 from epoch 121; 200 epochs; the model
#: with the lowest validation loss is kept. On MTAT's clean split it gives the
#: published figures of :data:`helpers.course.results.PUBLISHED_MTAT` (source
#: ``W``): macro ROC-AUC about 0.91 and PR-AUC about 0.45 for Musicnn and the
#: short-chunk models at full size, 0.87 / 0.36 for CRNN on 29.1 s.
WON2020_RECIPE = Recipe(optimizer="adam", lr=1e-4, weight_decay=1e-4, epochs=200, min_lr=1e-6,
                        schedule="won2020", switch_epoch=80, switch_lr=1e-3, drop_every=20, drops=2)

#: Recipes by name, for the command line (``python -m helpers train --recipe``).
RECIPES = {"homework": HOMEWORK_RECIPE, "won2020": WON2020_RECIPE}


# ----------------------------------------------------------------------------
# Mixed precision: the course's one policy
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively: Intel's AMX
    (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``, Intel Cooper Lake and
    later, AMD Zen 4 and later), read from the flags of ``cpuinfo`` on Linux,
    else asked of PyTorch. Elsewhere PyTorch emulates bfloat16, more slowly
    than it computes float32."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return sys.platform != "darwin" and any(check() for check in checks if check is not None)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype of mixed precision on ``device``: float16 on CUDA
    (with loss scaling, :func:`grad_scaler`); bfloat16 on a CPU that computes
    it natively (:func:`cpu_has_native_bfloat16`); ``None`` (plain float32)
    when ``enabled`` is false, on a CPU without native bfloat16 (an emulated
    one is slower than float32) and on any other device."""
    kind = torch.device(device).type
    if not enabled:
        return None
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return None


def describe_fast_paths(device: str | torch.device, recipe: "Recipe") -> str:
    """One line: what ``recipe``'s fast paths do on ``device`` (for a notebook to print)."""
    device = torch.device(device)
    dtype = amp_dtype(device, recipe.amp)
    if dtype == torch.float16:
        precision = "float16 autocast with loss scaling"
    elif dtype == torch.bfloat16:
        precision = "bfloat16 autocast (this CPU computes bfloat16 natively)"
    elif recipe.amp and device.type == "cpu":
        precision = "float32 (this CPU has no native bfloat16: emulated, it would be slower)"
    else:
        precision = "float32 (mixed precision off)"
    layout = "channels-last 2D convolutions" if recipe.channels_last else "the default memory layout"
    return f"{device.type}: {precision}; {layout}"


def fast_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` (changed in place) with its 4D weights in the channels-last
    memory layout when ``channels_last`` and the model has 2D convolutions:
    oneDNN's (CPU) and cuDNN's fast convolution kernels work in that layout,
    so every 2D convolution, batch norm and pooling layer then runs without
    converting; except for a model whose ``channels_last_helps`` is false
    (Musicnn, slower in it). Otherwise the usual contiguous layout. The
    numbers the model computes are the same up to rounding; its state dict
    loads either way."""
    wanted = channels_last and getattr(model, "channels_last_helps", True) and \
        any(isinstance(m, nn.Conv2d) for m in model.modules())
    return model.to(memory_format=torch.channels_last if wanted else torch.contiguous_format)


def autocast(device: torch.device, enabled: bool) -> ContextManager:
    """A context in which forward passes run in :func:`amp_dtype`, or plain
    float32 when that is ``None``."""
    dtype = amp_dtype(device, enabled)
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(device: torch.device, enabled: bool) -> Any:
    """A gradient scaler when mixed precision runs in float16 (whose small
    gradients underflow without scaling), else ``None``."""
    if amp_dtype(device, enabled) != torch.float16:
        return None
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):      # torch >= 2.3
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any = None) -> None:
    """One update: zero the gradients, backpropagate ``loss`` and step
    ``optimizer``; with a gradient ``scaler`` (float16 mixed precision), the
    loss is scaled and steps with non-finite gradients are skipped."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def make_optimizer(model: nn.Module, recipe: Recipe, epoch: int = 1) -> torch.optim.Optimizer:
    """The optimiser over ``model``'s parameters for ``epoch``: the recipe's,
    or after the switch of a ``won2020`` schedule SGD at :meth:`Recipe.lr_at`.

    On a CPU or a CUDA GPU it is PyTorch's fused implementation (one pass over
    each parameter, no temporary tensors: the same update up to rounding),
    which makes a step of the 74 M weights of the linear projection about 30 %
    shorter on a CPU."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if recipe.lr_at(epoch) is not None:
        return torch.optim.SGD(params, lr=recipe.lr_at(epoch), momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay, fused=fused)
    if recipe.schedule not in ("plateau", "won2020"):
        raise ValueError(f"unknown schedule {recipe.schedule!r}: use 'plateau' or 'won2020'")
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay, fused=fused)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}: use 'sgd' or 'adam'")


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------

def _loadable(value: Any, where: str = "checkpoint") -> Any:
    """``value`` in the types ``torch.load(weights_only=True)`` reads back:
    NumPy scalars and arrays become Python numbers and lists, paths strings,
    dataclasses dicts; anything else unknown is an error that names it."""
    if isinstance(value, np.generic):          # first: np.float64 and np.str_ are also float and str
        return value.item()
    if isinstance(value, (str, bool, int, float, type(None), torch.Tensor, torch.dtype, torch.device)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        return _loadable(asdict(value), where)
    if isinstance(value, dict):
        keys = [k.item() if isinstance(k, np.generic) else k for k in value]
        return {(k if isinstance(k, (str, int)) else str(k)): _loadable(v, f"{where}[{k!r}]")
                for k, v in zip(keys, value.values())}
    if isinstance(value, (list, tuple)):
        items = [_loadable(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where} holds a {type(value).__name__}, which torch.load(weights_only=True) refuses: "
                    f"store plain numbers, strings, lists, dicts or tensors")


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Save ``payload`` with ``torch.save`` atomically (temporary file, then
    rename): an interruption never leaves a half-written checkpoint. Values
    that a safe load would refuse (NumPy numbers, paths) are converted first,
    so that what saves also loads."""
    payload = _loadable(payload)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def model_checkpoint(model: nn.Module, model_name: str, tags: list[str], options: dict | None = None,
                     **extra: Any) -> dict:
    """What a model checkpoint holds: everything needed to rebuild and use it."""
    return {"format": CHECKPOINT_FORMAT, "model_name": model_name, "model_options": dict(options or {}),
            "tags": list(tags), "state_dict": model.state_dict(), **extra}


def _read_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path} is not a readable checkpoint of this course: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a checkpoint of this course (it holds a {type(ckpt).__name__})")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model stored at ``path`` (loaded with ``weights_only=True``).

    Returns ``(model in eval mode on device, checkpoint dict)``; the dict has
    ``model_name``, ``tags`` and whatever was saved with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train a model first (notebooks 01-05 save them)")
    ckpt = _read_checkpoint(path)
    if "model_name" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a model checkpoint of this course (no model_name/state_dict)")
    if ckpt.get("format") not in READABLE_MODEL_FORMATS:
        raise ValueError(f"{path} has checkpoint format {ckpt.get('format')!r}; this version of the course reads "
                         f"formats {', '.join(map(str, READABLE_MODEL_FORMATS))}: train the model again, or use the "
                         f"version of the course that saved it")
    model = build_model(ckpt["model_name"], n_tags=len(ckpt["tags"]), **ckpt.get("model_options", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(choose_device(device)).eval(), ckpt


# ----------------------------------------------------------------------------
# Prediction: chunk outputs averaged per clip
# ----------------------------------------------------------------------------

def _batches(loader: DataLoader, max_batches: int | None, what: str) -> Iterator:
    """The first ``max_batches`` batches of ``loader`` (all with ``None``),
    never fetching one more; an empty loader is an error naming ``what``."""
    _check_batches(loader, max_batches, what)
    return islice(loader, max_batches)


def _check_batches(loader: DataLoader, max_batches: int | None, what: str) -> None:
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be at least 1 (or None for every batch), got {max_batches}")
    if len(loader) == 0:
        raise ValueError(f"{what} gives no batch: the split has {len(loader.dataset)} items, fewer than one batch "
                         f"of {loader.batch_size}; lower the batch size or use a larger split")


@dataclass
class ClipOutputs:
    """Outputs of a model averaged over the chunks of each clip of a split.

    ``values``: ``(n_clips, dim)`` means (zeros for clips not reached);
    ``seen``: ``(n_clips,)`` bool, the clips whose chunks were run (all of
    them unless ``max_batches`` stopped early); ``loss``: mean
    binary cross-entropy of the chunk logits against their clip's labels,
    when asked for.
    """

    values: np.ndarray
    seen: np.ndarray
    loss: float | None = None


@torch.no_grad()
def _mean_over_chunks(forward: Callable[[torch.Tensor], torch.Tensor], chunks: ChunkDataset, *, batch_size: int,
                      device: torch.device, progress: bool, max_batches: int | None, num_workers: int, desc: str,
                      activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      with_loss: bool = False, amp: bool = False) -> ClipOutputs:
    """Run ``forward`` on every chunk of ``chunks`` (in :func:`autocast` with
    ``amp``) and average its outputs per clip (in float64), after
    ``activation`` (e.g. a sigmoid); with ``with_loss``, also the mean BCE of
    the raw outputs (logits)."""
    loader = DataLoader(chunks, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    n_batches = len(loader) if max_batches is None else min(max_batches, len(loader))
    total, count = None, torch.zeros(chunks.n_clips, dtype=torch.float64)
    loss_sum, n_values = 0.0, 0
    for x, pos in tqdm(_batches(loader, max_batches, desc), total=n_batches, desc=desc, unit="batch",
                       disable=not progress, leave=False):
        with autocast(device, amp):
            out = forward(x.to(device, non_blocking=True)).float().cpu()
        if with_loss:
            loss_sum += nn.functional.binary_cross_entropy_with_logits(out, chunks.labels[pos],
                                                                       reduction="sum").item()
            n_values += out.numel()
        if activation is not None:
            out = activation(out)
        out = out.double()
        total = torch.zeros(chunks.n_clips, out.shape[1], dtype=torch.float64) if total is None else total
        total.index_add_(0, pos, out)
        count.index_add_(0, pos, torch.ones(len(pos), dtype=torch.float64))
    values = total / count.clamp(min=1).unsqueeze(1)
    return ClipOutputs(values.numpy(), (count > 0).numpy(), loss_sum / max(n_values, 1) if with_loss else None)


def predict(model: nn.Module, chunks: ChunkDataset, batch_size: int = 64, device: str | torch.device | None = None,
            progress: bool = True, num_workers: int = 0, max_batches: int | None = None,
            fast_paths: bool = False) -> ClipOutputs:
    """Tag probabilities of every clip of ``chunks``: the sigmoid of the
    model's logits on each chunk, averaged per clip, float32 ``(n_clips,
    n_tags)`` in ``.values``. ``max_batches`` stops early (quick checks:
    ``.seen`` says which clips were reached). ``fast_paths``: mixed precision
    where the hardware has it natively and the channels-last layout (what
    training uses, :class:`Recipe`; the notebooks pass
    :func:`helpers.config.choose_fast_paths`); by default exact float32."""
    device = choose_device(device)
    model = fast_layout(model.to(device), fast_paths).eval()
    out = _mean_over_chunks(model, chunks, batch_size=batch_size, device=device, progress=progress,
                            max_batches=max_batches, num_workers=num_workers, desc="predicting",
                            activation=torch.sigmoid, amp=fast_paths)
    return replace(out, values=out.values.astype(np.float32))


#: Which layer gives a model's embedding: ``output``, what ``model(x)``
#: returns (the homework's backbones: a classifier built with ``n_tags = D``
#: ends in a D-dimensional linear projection, ``linear_projection`` returns its
#: projection); ``penultimate``, ``model.embed(x)``, the input of a tagger's
#: last layer (to compare what a tagger learned).
EMBEDDING_LAYERS = ("output", "penultimate")


def embedding_of(model: nn.Module, layer: str = "output") -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``waveform batch -> (batch, dim) embedding`` of ``model``
    at ``layer`` (see :data:`EMBEDDING_LAYERS`)."""
    if layer not in EMBEDDING_LAYERS:
        raise ValueError(f"unknown embedding layer {layer!r}: use one of {EMBEDDING_LAYERS}")
    return model.embed if layer == "penultimate" else model


def embed_clips(model: nn.Module, chunks: ChunkDataset, layer: str = "output", normalize: bool = False,
                batch_size: int = 64, device: str | torch.device | None = None, progress: bool = True,
                num_workers: int = 0, max_batches: int | None = None, fast_paths: bool = False) -> ClipOutputs:
    """The embedding of every clip of ``chunks``: the mean of its chunks'
    embeddings at ``layer`` (:func:`embedding_of`), float32 ``(n_clips,
    dim)`` in ``.values``, L2-normalised when ``normalize``. ``fast_paths``
    as in :func:`predict`."""
    device = choose_device(device)
    model = fast_layout(model.to(device), fast_paths).eval()
    out = _mean_over_chunks(embedding_of(model, layer), chunks, batch_size=batch_size, device=device,
                            progress=progress, max_batches=max_batches, num_workers=num_workers, desc="embedding",
                            amp=fast_paths)
    values = out.values
    if normalize:
        values = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    return replace(out, values=values.astype(np.float32))


def evaluate(model: nn.Module, data: TaggedAudio, split: str = "test", chunk_samples: int | None = None,
             batch_size: int = 64, device: str | torch.device | None = None, progress: bool = True,
             max_batches: int | None = None, bootstrap: int = 1000,
             fast_paths: bool = False) -> tuple[TaggingScores, np.ndarray, np.ndarray]:
    """Tagging scores of ``model`` on ``split`` with chunk-averaged predictions
    (every clip covered whole, :func:`helpers.data.chunk_starts`).

    Returns ``(scores, probabilities (n_clips, n_tags), labels (n_clips, n_tags))``.
    The scores carry 95 % intervals of the macro ROC-AUC and PR-AUC from
    ``bootstrap`` resamples of the split's songs
    (:func:`helpers.metrics.bootstrap_intervals`; 0: none). ``max_batches``
    (the ``ci`` profile) scores only the clips of the first batches;
    ``fast_paths`` as in :func:`predict`.
    """
    chunks = ChunkDataset(data, split, chunk_samples or getattr(model, "input_samples", 48000))
    out = predict(model, chunks, batch_size, device, progress, max_batches=max_batches, fast_paths=fast_paths)
    probs, y = out.values[out.seen], chunks.labels.numpy()[out.seen]
    songs = clip_songs(data, split)[out.seen] if bootstrap else None
    return tagging_scores(y, probs, data.tags, groups=songs, n_boot=bootstrap), probs, y


# ----------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------

@dataclass
class EpochRecord:
    """What every training run records per epoch (lists of equal length);
    subclasses add their validation fields and name the one that selects the
    best epoch (``score_field``, lower is better when ``mode`` is ``'min'``)."""

    score_field: ClassVar[str]
    mode: ClassVar[str]

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    train_clips_per_s: list[float] = field(default_factory=list)
    stopped: str = ""

    @property
    def scores(self) -> list[float]:
        return getattr(self, self.score_field)

    @property
    def best_epoch(self) -> int:
        """The first epoch with the best score (0 before the first epoch;
        NaN scores are never best unless every score is NaN)."""
        scores = np.asarray(self.scores, dtype=float)
        if scores.size == 0:
            return 0
        if np.isnan(scores).all():
            return self.epoch[0]
        pick = np.nanargmin if self.mode == "min" else np.nanargmax
        return self.epoch[int(pick(scores))]


@dataclass
class History(EpochRecord):
    """Per-epoch record of a tagger's training run; the lowest validation
    loss selects the best epoch."""

    score_field: ClassVar[str] = "valid_loss"
    mode: ClassVar[str] = "min"

    valid_loss: list[float] = field(default_factory=list)
    valid_roc_auc: list[float] = field(default_factory=list)
    valid_pr_auc: list[float] = field(default_factory=list)


def kept_value(history: EpochRecord, metric: str) -> float:
    """The value of ``metric`` (a per-epoch field, e.g. ``valid_roc_auc``) at
    the epoch the run kept (:attr:`EpochRecord.best_epoch`)."""
    return float(getattr(history, metric)[history.epoch.index(history.best_epoch)])


def best_on_validation(histories: dict[str, EpochRecord], metric: str = "valid_roc_auc",
                       higher_is_better: bool = True) -> str:
    """The key of the run whose kept epoch is best on the validation
    ``metric``: how the course chooses between runs (the test split is
    measured once, for the chosen one, and never chooses). NaN counts as worst;
    ties go to the first run."""
    if not histories:
        raise ValueError("no runs to choose from")
    sign = 1.0 if higher_is_better else -1.0
    values = {name: kept_value(h, metric) for name, h in histories.items()}
    return max(values, key=lambda name: -math.inf if math.isnan(values[name]) else sign * values[name])


class BatchLoss(NamedTuple):
    """The loss of one training batch, and what it covered: ``examples`` (the
    loss's items: clips, or triplets) and ``clips`` (waveforms run through
    the model, for the throughput)."""

    loss: torch.Tensor
    examples: int
    clips: int


def _random_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training run draws from: Python's, NumPy's,
    torch's on the CPU and on every CUDA device, and the DataLoader's
    generator (shuffling, and the seeds of its workers)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generator": generator.get_state()}


def _restore_random_states(states: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["generator"])


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(data: TaggedAudio) -> str:
    """A digest of what a run trains and is selected on: the dataset's name,
    tags, clip length and generator, and every clip's id, split, length and
    labels (not the audio: 20 GB for MTAT). The same on every preparation of
    the same data, so that a run resumes in a new Colab runtime."""
    h = hashlib.sha1(json.dumps({k: data.meta.get(k) for k in ("name", "tags", "sample_rate", "clip_samples",
                                                                "split_rule", "generator_version")},
                                sort_keys=True).encode())
    h.update("\n".join(f"{c['clip_id']},{c['split']},{c['n_samples']}" for c in data.clips).encode())
    h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()[:16]


def architecture_fingerprint(model: nn.Module) -> str:
    """A digest of a model's layers: the name and shape of every tensor of its
    state dict (two models with the same fingerprint can load each other's
    weights)."""
    return _digest([(k, list(v.shape)) for k, v in model.state_dict().items()])[:16]


def run_identity(model: nn.Module, data: TaggedAudio, recipe: "Recipe", model_name: str,
                 model_options: dict | None, **extra: Any) -> dict[str, Any]:
    """What identifies a training run: the model (name, options, layers, the
    published weights it starts from, its frozen parameters), the recipe (all
    but :attr:`Recipe.EXTENDABLE`), the data and ``extra`` (a loss's
    settings). A run resumes only from a ``last.pt`` of the same identity."""
    start = {"pretrained": model.pretrained} if getattr(model, "pretrained", None) else {}
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    return {"model_name": model_name, "model_options": dict(model_options or {}),
            "architecture": architecture_fingerprint(model), **start, **({"frozen": frozen} if frozen else {}),
            "recipe": recipe.identity(), "data": data_fingerprint(data), **extra}


@dataclass
class RunCheckpoints:
    """Where a training run keeps its checkpoints, and what identifies it.

    ``folder``: ``last.pt`` (everything needed to resume, saved before the
    first epoch and after every epoch) and ``best.pt`` (a model checkpoint
    of the best epoch, see :func:`load_checkpoint`); ``None`` keeps nothing on
    disk. ``identity``: what a resumed run must share with the saved one
    (:func:`run_identity`); ``resume``: continue from ``last.pt`` when it
    exists (``False`` starts over).
    """

    folder: Path | None
    identity: dict[str, Any]
    resume: bool = True

    @classmethod
    def for_run(cls, identity: dict[str, Any], checkpoint_dir: str | Path | None = None,
                runs_dir: str | Path | None = None, resume: bool = True) -> "RunCheckpoints":
        """The checkpoints of a run: in ``checkpoint_dir`` itself, or in a folder
        of ``runs_dir`` named after the run, ``<model_name>-<digest of its
        identity>`` (so that calling the same training again finds its run,
        and a changed one starts its own); neither: none kept."""
        if checkpoint_dir is not None and runs_dir is not None:
            raise ValueError("pass checkpoint_dir (the run's own folder) or runs_dir (a folder of runs), not both")
        if runs_dir is not None:
            checkpoint_dir = Path(runs_dir) / f"{identity['model_name']}-{_digest(_loadable(identity))[:10]}"
        return cls(Path(checkpoint_dir) if checkpoint_dir is not None else None, identity, resume)

    @property
    def last(self) -> Path | None:
        return self.folder / "last.pt" if self.folder else None

    @property
    def best(self) -> Path | None:
        return self.folder / "best.pt" if self.folder else None

    def saved_state(self) -> dict | None:
        """The state of the run saved in ``last.pt``, or ``None`` when there
        is none to resume. A ``last.pt`` of another run is an error."""
        if not (self.last and self.resume and self.last.exists()):
            return None
        state = _read_checkpoint(self.last)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.last} was written by another version of the course (format "
                             f"{state.get('format')!r}, this one writes {CHECKPOINT_FORMAT}): delete it to start over")
        if state.get("identity") != _loadable(self.identity):
            differ = sorted(k for k in {*self.identity, *state.get("identity", {})}
                            if _loadable(self.identity).get(k) != state.get("identity", {}).get(k))
            raise ValueError(f"{self.last} belongs to another run ({', '.join(differ)} differ): delete it or pass "
                             f"another checkpoint_dir, or resume=False to start over")
        return state

    def save_state(self, state: dict) -> None:
        if self.last:
            save_checkpoint(self.last, {"format": CHECKPOINT_FORMAT, "identity": self.identity, **state})

    def save_best(self, payload: dict) -> None:
        if self.best:
            save_checkpoint(self.best, payload)

    def best_weights(self) -> dict | None:
        return _read_checkpoint(self.best)["state_dict"] if self.best and self.best.exists() else None


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except that a batch-norm layer whose parameters are
    all frozen (``requires_grad`` off) stays in evaluation mode: a frozen
    layer keeps its statistics too."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine \
                and not any(p.requires_grad for p in module.parameters()):
            module.eval()
    return model


def train_epochs(model: nn.Module, recipe: Recipe, *, name: str, loader: DataLoader, generator: torch.Generator,
                 step: Callable[[Any], BatchLoss], validate: Callable[[], dict[str, Any]], history: EpochRecord,
                 checkpoints: RunCheckpoints, best_payload: Callable[[int, dict], dict], device: torch.device,
                 progress: bool = True, loss_name: str = "training loss") -> EpochRecord:
    """The epoch loop of every training run of the course (:func:`fit` for
    taggers, :func:`helpers.retrieval.fit_triplet` for embedders): optimiser
    and plateau schedule, mixed precision, the NaN stop, per-epoch
    validation, best-epoch selection, stopping rules, checkpoints and resume.

    What differs between runs is passed in: ``step(batch)``, the
    :class:`BatchLoss` of one batch of ``loader`` (call the model inside
    :func:`autocast`); ``validate()``, the values of the ``history`` fields to
    append for the epoch (its ``score_field`` among them); ``history``, an
    empty :class:`EpochRecord` of the run's kind; ``best_payload(epoch,
    fields)``, what ``best.pt`` holds.

    Resuming is exact: ``last.pt``, saved before the first epoch and after
    each one, keeps the weights, the optimiser, the schedule, the gradient
    scaler, the history and every random state (:func:`_random_states`), so
    a run interrupted anywhere (a disconnected runtime, a killed kernel, an
    interrupted cell) continues from its last finished epoch, whatever the
    weights in memory; each epoch creates its DataLoader iterator
    anew (no persistent workers), so the worker seeds are drawn from the
    restored generator and a resumed run (with the same number of DataLoader
    workers, none or some) gives on the CPU the same model as an
    uninterrupted one (on a GPU, within its non-determinism). A finished run
    is loaded, not trained again (it says so); one that ran out of epochs
    continues when called with more; one stopped by its stopping rules stays
    stopped.
    At the end the model holds the weights of its best epoch.
    """
    saved = checkpoints.saved_state()
    optimizer = make_optimizer(model, recipe, max(saved["epoch"], 1) if saved else 1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=history.mode, factor=recipe.plateau_factor,
                                                           patience=recipe.plateau_patience)
    scaler = grad_scaler(device, recipe.amp)
    start_epoch = 1

    def save_state(epoch: int) -> None:
        checkpoints.save_state({"epoch": epoch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                                "scaler": scaler.state_dict() if scaler is not None else {},
                                "history": asdict(history), "random": _random_states(generator)})

    _check_batches(loader, recipe.max_batches, f"the training data of {name}")
    state = saved
    if state is None:
        save_state(0)          # interrupted in epoch 1, the run restarts from these weights, not the ones in memory
    else:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = type(history)(**{f.name: state["history"][f.name] for f in fields(history)})
        _restore_random_states(state["random"], generator)
        start_epoch = state["epoch"] + 1
        run = checkpoints.folder.name
        if history.stopped or start_epoch > recipe.epochs:
            print(f"{name}: the run {run} has finished ({len(history.epoch)} epochs, "
                  + (f"{history.stopped}" if history.stopped else f"of {recipe.epochs}")
                  + f"): its best epoch, {history.best_epoch}, is loaded, not trained again")
        else:
            print(f"{name}: resuming the run {run} "
                  + (f"after epoch {state['epoch']}" if state["epoch"] else "from its start")
                  + f" (of {recipe.epochs})")
    if history.stopped:
        start_epoch = recipe.epochs + 1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if start_epoch > 1:
        best_state = checkpoints.best_weights() or best_state

    n_batches = len(loader) if recipe.max_batches is None else min(recipe.max_batches, len(loader))
    epochs = tqdm(range(start_epoch, recipe.epochs + 1), desc=f"training {name}", unit="epoch",
                  disable=not progress, initial=start_epoch - 1, total=recipe.epochs)
    for epoch in epochs:
        if recipe.schedule == "won2020" and epoch == recipe.switch_epoch + 1:
            model.load_state_dict(best_state)                  # Won et al.: go on from the best model, with SGD
            optimizer = make_optimizer(model, recipe, epoch)
        elif recipe.lr_at(epoch) is not None:
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr_at(epoch)
        train_mode(model)
        loss_sum, seen, clips, t0 = 0.0, 0, 0, time.perf_counter()
        batches = tqdm(islice(loader, recipe.max_batches), total=n_batches,
                       desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
        for b, batch in enumerate(batches):
            result = step(batch)
            if not torch.isfinite(result.loss):
                raise TrainingDivergedError(
                    f"the {loss_name} of {name} became {result.loss.item()} in epoch {epoch}, batch {b}: lower the "
                    f"learning rate (now {optimizer.param_groups[0]['lr']:g}) or check the input data."
                    + (f" Checkpoints in {checkpoints.folder} hold the last good epoch." if checkpoints.folder else ""))
            optimizer_step(result.loss, optimizer, scaler)
            loss_sum += result.loss.item() * result.examples
            seen += result.examples
            clips += result.clips
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}")
        elapsed = time.perf_counter() - t0
        values = validate()
        score = values[history.score_field]
        history.epoch.append(epoch)
        history.train_loss.append(loss_sum / max(seen, 1))
        for key, value in values.items():
            getattr(history, key).append(value)
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.train_clips_per_s.append(clips / elapsed if elapsed > 0 else float("nan"))
        if recipe.schedule == "plateau":
            scheduler.step(score)
        if history.best_epoch == epoch:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            checkpoints.save_best(best_payload(epoch, values))
        epochs.set_postfix(train_loss=f"{history.train_loss[-1]:.4f}", **{history.score_field: f"{score:.4f}"})
        if optimizer.param_groups[0]["lr"] < recipe.min_lr:
            history.stopped = f"learning rate below {recipe.min_lr:g} after epoch {epoch}"
        elif recipe.early_stopping and epoch - history.best_epoch >= recipe.early_stopping:
            history.stopped = (f"no better {history.score_field.replace('_', ' ')} for {recipe.early_stopping} epochs "
                               f"(epoch {epoch})")
        save_state(epoch)
        if history.stopped:
            break
    epochs.close()
    model.load_state_dict(best_state)
    return history


def training_loader(dataset: Dataset, recipe: Recipe, generator: torch.Generator, device: torch.device) -> DataLoader:
    """The shuffled training DataLoader of a run: batches of
    ``recipe.batch_size`` (the last incomplete one dropped; a split smaller
    than one batch, such as a tiny copy of MTAT, gives one batch of all its
    items), shuffled and worker-seeded by ``generator``, no persistent
    workers (see :func:`train_epochs` on exact resume)."""
    if len(dataset) < 2:
        raise ValueError(f"the training split has {len(dataset)} item(s): training needs at least 2 (batch "
                         f"normalisation compares the items of a batch); use a larger dataset")
    return DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=len(dataset) >= recipe.batch_size,
                      generator=generator, num_workers=recipe.num_workers, pin_memory=device.type == "cuda")


def format_duration(seconds: float) -> str:
    """``'under a minute'``, ``'about 7 min'`` or ``'about 2 h 05 min'``."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60:02d} min"


@dataclass
class TrainingTime:
    """The expected duration of a training run: measured seconds per training
    batch and per validation batch, times the batches the run plans."""

    train_batch_s: float
    valid_batch_s: float
    train_batches: int              # per epoch
    valid_batches: int              # per epoch
    epochs: int

    @property
    def seconds(self) -> float:
        return self.epochs * (self.train_batches * self.train_batch_s + self.valid_batches * self.valid_batch_s)

    def __str__(self) -> str:
        epochs = f"{self.epochs} epoch" + ("s" if self.epochs != 1 else "")
        return (f"{format_duration(self.seconds)}: {epochs} of {self.train_batches} training batches at "
                f"{1000 * self.train_batch_s:.0f} ms and {self.valid_batches} validation batches at "
                f"{1000 * self.valid_batch_s:.0f} ms")


def _seconds_per_call(call: Callable[[], Any], times: int, device: torch.device) -> float:
    call()                                                   # warm-up: allocations, cuDNN's choice of kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(times):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / times


def estimate_training_time(model: nn.Module, data: TaggedAudio, recipe: Recipe,
                           device: str | torch.device | None = None, clips_per_item: int = 1,
                           timed_batches: int = 1) -> TrainingTime:
    """How long :func:`fit` (``clips_per_item=1``) or
    :func:`helpers.retrieval.fit_triplet` (``3``: anchor, positive, negative)
    should take to train ``model`` on ``data`` with ``recipe``, from a short
    warm-up on this machine.

    Measured on a copy of ``model`` (the model and every random state are
    left as they were): after one warm-up step, ``timed_batches`` training
    steps (forward, backward, optimiser step, with the recipe's mixed
    precision) on a batch of real training crops, and as many validation
    batches without gradients (never more than the run plans). Multiplied by the batches the run plans: the
    train split in batches of ``recipe.batch_size``, every validation chunk
    in batches of ``recipe.eval_batch_size`` (each at most
    ``recipe.max_batches``), ``recipe.epochs`` times. Data loading is not
    timed (DataLoader workers overlap it with the model's work); the
    stopping rules may end a run sooner.
    """
    device = choose_device(device)
    chunk = getattr(model, "input_samples", 48000)
    crops, chunks = RandomCropDataset(data, "train", chunk), ChunkDataset(data, "valid", chunk)
    cap = recipe.max_batches or math.inf
    train_batches = int(min(max(len(crops) // recipe.batch_size, 1), cap))
    valid_batches = int(min(math.ceil(len(chunks) / recipe.eval_batch_size), cap))
    generator = torch.Generator()
    states = _random_states(generator)
    try:
        trial = fast_layout(copy.deepcopy(model).to(device), recipe.channels_last).train()
        optimizer, scaler = make_optimizer(trial, recipe), grad_scaler(device, recipe.amp)
        n = recipe.batch_size * clips_per_item
        x = torch.stack([crops[i % len(crops)][0] for i in range(n)]).to(device)
        xv = torch.stack([chunks[j % len(chunks)][0] for j in range(recipe.eval_batch_size)]).to(device)

        def train_step() -> None:
            with autocast(device, recipe.amp):
                out = trial(x)
            optimizer_step(nn.functional.binary_cross_entropy_with_logits(out.float(), torch.zeros_like(
                out, dtype=torch.float32)), optimizer, scaler)

        def valid_step() -> None:
            with torch.no_grad(), autocast(device, recipe.amp):
                trial(xv)

        train_s = _seconds_per_call(train_step, min(timed_batches, train_batches * recipe.epochs), device)
        trial.eval()
        valid_s = _seconds_per_call(valid_step, min(timed_batches, valid_batches * recipe.epochs), device)
    finally:
        _restore_random_states(states, generator)
    del trial
    return TrainingTime(train_s, valid_s, train_batches, valid_batches, recipe.epochs)


def fit(model: nn.Module, data: TaggedAudio, recipe: Recipe = HOMEWORK_RECIPE, model_name: str = "model",
        model_options: dict | None = None, checkpoint_dir: str | Path | None = None,
        runs_dir: str | Path | None = None, resume: bool = True, device: str | torch.device | None = None,
        progress: bool = True) -> History:
    """Train ``model`` on the train split of ``data`` and select it on the valid split.

    Each epoch: random crops of ``model.input_samples`` samples from every
    training clip (shuffled with a seeded generator), ``BCEWithLogitsLoss``,
    then the validation loss and scores over all validation chunks. The
    learning rate drops on plateaus of the validation loss; training stops
    after ``recipe.epochs``, when the learning rate falls below
    ``recipe.min_lr``, or after ``recipe.early_stopping`` epochs without
    improvement. At the end the model holds the weights of its best epoch.

    With ``checkpoint_dir``, ``last.pt`` (everything needed to resume) is saved
    before the first epoch and after every epoch, and ``best.pt`` (a model
    checkpoint, see :func:`load_checkpoint`) at every new best; rerunning with
    ``resume=True`` continues after the last finished epoch, and a finished
    run is loaded, not trained again (see :func:`train_epochs`). With
    ``runs_dir`` instead (what the notebooks pass), the run keeps them in its
    own folder there, named after the run (:meth:`RunCheckpoints.for_run`):
    the same call finds its run again, in a new runtime too. A NaN or
    infinite loss raises :class:`TrainingDivergedError` and leaves the
    checkpoints as they were.
    """
    identity = run_identity(model, data, recipe, model_name, model_options)
    device = choose_device(device)
    generator = seed_everything(recipe.seed)
    fast_layout(model.to(device), recipe.channels_last)
    chunk = getattr(model, "input_samples", 48000)
    loader = training_loader(RandomCropDataset(data, "train", chunk), recipe, generator, device)
    valid = ChunkDataset(data, "valid", chunk)
    criterion = nn.BCEWithLogitsLoss()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> BatchLoss:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, recipe.amp):
            logits = model(x)
        return BatchLoss(criterion(logits.float(), y), len(x), len(x))

    def validate() -> dict[str, float]:
        model.eval()
        out = _mean_over_chunks(model, valid, batch_size=recipe.eval_batch_size, device=device, progress=False,
                                max_batches=recipe.max_batches, num_workers=recipe.num_workers,
                                desc=f"the validation data of {model_name}", activation=torch.sigmoid,
                                with_loss=True, amp=recipe.amp)
        try:
            scores = tagging_scores(valid.labels.numpy()[out.seen], out.values[out.seen])
        except ValueError:             # too few clips seen (ci profile) to score any tag
            scores = None
        return {"valid_loss": out.loss, "valid_roc_auc": scores.roc_auc if scores else float("nan"),
                "valid_pr_auc": scores.pr_auc if scores else float("nan")}

    def best_payload(epoch: int, values: dict) -> dict:
        return model_checkpoint(model, model_name, data.tags, model_options, epoch=epoch,
                                valid_loss=values["valid_loss"], dataset=data.meta.get("name", ""))

    checkpoints = RunCheckpoints.for_run(identity, checkpoint_dir, runs_dir, resume)
    return train_epochs(model, recipe, name=model_name, loader=loader, generator=generator, step=step,
                        validate=validate, history=History(), checkpoints=checkpoints, best_payload=best_payload,
                        device=device, progress=progress)


# ----------------------------------------------------------------------------
# A linear model on fixed features: probes and classical baselines
# ----------------------------------------------------------------------------

@dataclass
class LogisticProbe:
    """One L2-regularised logistic regression per tag on standardised
    features (what a *linear probe* of a pretrained model's embeddings and
    the classical baseline on hand-made features both are).

    ``c``: the inverse regularisation strength chosen on validation;
    ``mean``, ``scale``: the training features' standardisation; ``models``:
    per tag, a fitted ``sklearn`` ``LogisticRegression``, or ``None`` for a
    tag that is constant in the training set (predicted by its training
    frequency, ``prior``)."""

    c: float
    mean: np.ndarray
    scale: np.ndarray
    models: list
    prior: np.ndarray
    valid_losses: dict[float, float] = field(default_factory=dict)

    def as_linear(self) -> nn.Linear:
        """The probe as a PyTorch layer on the raw (unstandardised) features:
        ``sigmoid(layer(x))`` equals :meth:`predict_proba` (a constant tag: its
        prior's logit). It can start the tag layer of a model being fine-tuned
        (linear probing, then fine-tuning: Kumar et al. 2022)."""
        weight = np.zeros((len(self.models), len(self.mean)))
        bias = np.zeros(len(self.models))
        for t, (m, p) in enumerate(zip(self.models, self.prior)):
            if m is None:
                q = float(np.clip(p, 1e-6, 1 - 1e-6))
                bias[t] = math.log(q / (1 - q))
            else:
                weight[t] = m.coef_[0] / self.scale
                bias[t] = m.intercept_[0] - float(np.sum(m.coef_[0] * self.mean / self.scale))
        layer = nn.Linear(len(self.mean), len(self.models))
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))
        return layer

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Features ``(n, dim)`` -> tag probabilities ``(n, n_tags)``."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return np.stack([m.predict_proba(x)[:, 1] if m is not None else np.full(len(x), p)
                         for m, p in zip(self.models, self.prior)], axis=1)


def log_mel_statistics(data: TaggedAudio, split: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The classical features of a clip: the mean and the standard deviation
    over time of each band of its log-mel spectrogram (the course's front end,
    whole clip). Returns ``(features (n_clips, 2 * 96), labels (n_clips,
    n_tags))`` for the clips of ``split``, in the split's order."""
    front_end = LogMelSpectrogram()
    rows = data.split_indices(split)
    lengths = [data.clips[int(r)]["n_samples"] for r in rows]
    batches, start = [], 0                         # runs of up to 64 clips of one length, computed together
    while start < len(rows):
        end = start + 1
        while end < len(rows) and end - start < 64 and lengths[end] == lengths[start]:
            end += 1
        batches.append((start, end))
        start = end
    features = np.zeros((len(rows), 2 * front_end.n_mels), dtype=np.float32)
    with torch.no_grad():
        for start, end in tqdm(batches, desc=f"log-mel statistics of {split}", unit="batch", disable=not progress):
            waves = torch.from_numpy(np.stack([data.waveform(int(r)) for r in rows[start:end]]))
            spec = front_end(waves)[:, 0]                                    # (clips, 96, frames)
            features[start:end] = torch.cat([spec.mean(dim=2), spec.std(dim=2)], dim=1).numpy()
    return features, data.labels[rows].astype(np.float32)


def fit_logistic_probe(train_x: np.ndarray, train_y: np.ndarray, valid_x: np.ndarray, valid_y: np.ndarray,
                       cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)) -> LogisticProbe:
    """Fit :class:`LogisticProbe` on ``(train_x (n, dim), train_y (n, n_tags))``
    for each regularisation ``c`` in ``cs`` and keep the one with the lowest
    validation loss (mean binary cross-entropy on ``valid_x``, ``valid_y``):
    the choice is made on validation, never on test."""
    train_x, valid_x = np.asarray(train_x, dtype=np.float64), np.asarray(valid_x, dtype=np.float64)
    train_y, valid_y = np.asarray(train_y) > 0.5, np.asarray(valid_y) > 0.5
    if train_x.ndim != 2 or train_y.shape != (len(train_x), train_y.shape[1]) or \
            valid_x.shape[1:] != train_x.shape[1:] or valid_y.shape != (len(valid_x), train_y.shape[1]):
        raise ValueError(f"features (n, dim) and labels (n, n_tags) must match: train {train_x.shape}, "
                         f"{train_y.shape}; valid {valid_x.shape}, {valid_y.shape}")
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    prior = train_y.mean(axis=0)
    x = (train_x - mean) / scale
    best, losses = None, {}
    for c in cs:
        models = [LogisticRegression(C=c, max_iter=2000).fit(x, train_y[:, t]) if 0 < prior[t] < 1 else None
                  for t in range(train_y.shape[1])]
        probe = LogisticProbe(c, mean, scale, models, prior, losses)
        p = np.clip(probe.predict_proba(valid_x), 1e-7, 1 - 1e-7)
        losses[c] = float(-np.mean(valid_y * np.log(p) + (~valid_y) * np.log(1 - p)))
        if best is None or losses[c] < losses[best.c]:
            best = probe
    return best
