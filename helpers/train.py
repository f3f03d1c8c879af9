"""Training and evaluation: seeding, devices, run profiles, the training loop,
chunk-averaged prediction, and checkpoints.

The homework's recipe is :data:`HOMEWORK_RECIPE` (SGD with Nesterov momentum,
ReduceLROnPlateau on the validation loss, stop when the learning rate falls
below 1e-5). :func:`fit` trains any classifier of :mod:`helpers.models` with
``BCEWithLogitsLoss`` on random crops, evaluates every epoch on all chunks of
the validation clips, keeps the best model by validation loss, saves
checkpoints atomically, resumes an interrupted run, and stops with a clear
message when the loss becomes NaN. :func:`fit_triplet` trains embedders with
a triplet loss (metric learning) in the same loop, and
:func:`evaluate_retrieval` measures them with Recall@K.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # In a Jupyter kernel without ipywidgets, the first import of tqdm.auto warns "IProgress not found" on
    # stderr (which nbval compares) and falls back to text bars: silenced here, and so for later imports too.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from .datasets import ChunkDataset, RandomCropDataset, TaggedAudio, triplet_dataset
from .metrics import TaggingScores, tagging_scores

CHECKPOINT_FORMAT = 1


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------
# Reproducibility, devices, profiles
# ----------------------------------------------------------------------------

def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (every device); returns a seeded
    ``torch.Generator`` for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: Run profiles. ``ci``: seconds per notebook (a few batches), for nbval.
#: ``cpu``: the default without a GPU, the course in minutes on 2 cores.
#: ``gpu``: the full recipe on MagnaTagATune.
PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"epochs": 1, "max_batches": 2, "batch_size": 16, "num_workers": 0},
    "cpu": {"epochs": 8, "max_batches": None, "batch_size": 16, "num_workers": 0},
    "gpu": {"epochs": 30, "max_batches": None, "batch_size": 16, "num_workers": 4},
}


def choose_profile(profile: str | None = None) -> str:
    """The run profile: ``profile`` if given, else ``$COURSE_PROFILE``, else
    ``gpu`` when CUDA is present and ``cpu`` otherwise."""
    profile = profile or os.environ.get("COURSE_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {list(PROFILES)}")
    return profile


def choose_dataset(name: str | None = None) -> str:
    """The dataset: ``name`` if given, else ``$COURSE_DATASET``, else ``synthetic``."""
    name = name or os.environ.get("COURSE_DATASET") or "synthetic"
    if name not in ("synthetic", "mtat"):
        raise ValueError(f"unknown dataset {name!r}: choose 'synthetic' or 'mtat'")
    return name


def choose_progress(profile: str | None = None) -> bool:
    """Whether to show progress bars: ``$COURSE_PROGRESS`` when set (``0``,
    ``false``, ``no`` or ``off`` for no), else yes except in the ``ci``
    profile. ``python -m helpers run`` sets it to ``0``: bars recorded by a
    headless run are noise, and without ipywidgets they go to stderr."""
    value = os.environ.get("COURSE_PROGRESS", "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    return choose_profile(profile) != "ci"


# ----------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------

@dataclass
class Recipe:
    """How to train: optimiser, schedule, stopping rules and batch sizes.

    ``max_batches`` caps the batches per epoch (the ``ci`` profile);
    ``early_stopping`` stops after that many epochs without a better
    validation loss; training also stops when the learning rate falls below
    ``min_lr``.
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
    amp: bool = False                 # mixed precision (CUDA only)
    seed: int = 0

    def for_profile(self, profile: str, **changes: Any) -> "Recipe":
        """This recipe with the epochs, batch caps and workers of a profile."""
        profile = choose_profile(profile)
        settings = {**PROFILES[profile], "amp": self.amp or profile == "gpu"}
        return replace(self, **{**settings, **changes})


#: The homework's recipe: SGD(lr 1e-3, momentum 0.9, Nesterov), ReduceLROnPlateau
#: (factor 0.2, patience 5) on the validation loss, stop below lr 1e-5, 10 epochs.
HOMEWORK_RECIPE = Recipe()


def _grad_scaler():
    """A CUDA gradient scaler for mixed precision (``torch.amp`` from torch 2.3 on)."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
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


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}: use 'sgd' or 'adam'")


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Save ``payload`` with ``torch.save`` atomically (temporary file, then
    rename): an interruption never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def model_checkpoint(model: nn.Module, model_name: str, tags: list[str], options: dict | None = None,
                     **extra: Any) -> dict:
    """What a model checkpoint holds: everything needed to rebuild and use it."""
    return {"format": CHECKPOINT_FORMAT, "model_name": model_name, "model_options": dict(options or {}),
            "tags": list(tags), "state_dict": model.state_dict(), **extra}


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model stored at ``path`` (loaded with ``weights_only=True``).

    Returns ``(model in eval mode on device, checkpoint dict)``; the dict has
    ``model_name``, ``tags`` and whatever was saved with it."""
    from .models import build_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train a model first (notebooks 01-05 save them)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path} is not a readable checkpoint of this course: {e}") from e
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a model checkpoint of this course (no model_name/state_dict)")
    model = build_model(ckpt["model_name"], n_tags=len(ckpt["tags"]), **ckpt.get("model_options", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(choose_device(device)).eval(), ckpt


# ----------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, data: ChunkDataset, batch_size: int = 64, device: str | torch.device | None = None,
            output: str = "probs", progress: bool = True, num_workers: int = 0,
            max_batches: int | None = None) -> np.ndarray:
    """Clip-level outputs averaged over every chunk of each clip, batched.

    ``output='probs'``: sigmoid probabilities ``(n_clips, n_tags)``;
    ``'embedding'``: mean chunk embedding, L2-normalised, ``(n_clips, dim)``;
    ``'logits'``: mean chunk logits. ``max_batches`` stops early (for quick
    checks; clips never reached keep zeros).
    """
    device = choose_device(device) if device is None else torch.device(device)
    model = model.to(device).eval()
    total, count = None, torch.zeros(data.n_clips, dtype=torch.float64)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    for b, (x, pos) in enumerate(tqdm(loader, desc=f"predicting {output}", unit="batch", disable=not progress,
                                      leave=False)):
        if max_batches is not None and b >= max_batches:
            break
        x = x.to(device, non_blocking=True)
        if output == "probs":
            out = torch.sigmoid(model(x))
        elif output == "logits":
            out = model(x)
        elif output == "embedding":
            out = model.embed(x) if hasattr(model, "embed") else model(x)
        else:
            raise ValueError(f"unknown output {output!r}: use 'probs', 'logits' or 'embedding'")
        out = out.double().cpu()
        total = torch.zeros(data.n_clips, out.shape[1], dtype=torch.float64) if total is None else total
        total.index_add_(0, pos, out)
        count.index_add_(0, pos, torch.ones(len(pos), dtype=torch.float64))
    result = total / count.clamp(min=1).unsqueeze(1)
    if output == "embedding":
        result = torch.nn.functional.normalize(result, dim=1)
    return result.float().numpy()


def evaluate(model: nn.Module, data: TaggedAudio, split: str = "test", chunk_samples: int | None = None,
             batch_size: int = 64, device: str | torch.device | None = None, progress: bool = True,
             max_batches: int | None = None) -> tuple[TaggingScores, np.ndarray, np.ndarray]:
    """Tagging scores of ``model`` on ``split`` with chunk-averaged predictions.

    Returns ``(scores, probabilities (n_clips, n_tags), labels (n_clips, n_tags))``.
    ``max_batches`` (the ``ci`` profile) scores only the clips of the first
    batches.
    """
    chunks = ChunkDataset(data, split, chunk_samples or getattr(model, "input_samples", 48000))
    probs = predict(model, chunks, batch_size, device, "probs", progress, max_batches=max_batches)
    y = chunks.labels.numpy()
    if max_batches is not None:
        seen = sorted({chunks.items[j][0] for j in range(min(len(chunks), max_batches * batch_size))})
        probs, y = probs[seen], y[seen]
    return tagging_scores(y, probs, data.tags), probs, y


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


def _valid_pass(model: nn.Module, loader: DataLoader, n_clips: int, labels: torch.Tensor, device: torch.device,
                max_batches: int | None) -> tuple[float, TaggingScores | None]:
    """Validation loss over chunks (each chunk against its clip's labels) and
    scores of the chunk-averaged probabilities."""
    model.eval()
    loss_sum, n = 0.0, 0
    probs = torch.zeros(n_clips, labels.shape[1], dtype=torch.float64)
    count = torch.zeros(n_clips, dtype=torch.float64)
    with torch.no_grad():
        for b, (x, pos) in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            logits = model(x.to(device)).float().cpu()
            loss_sum += nn.functional.binary_cross_entropy_with_logits(logits, labels[pos], reduction="sum").item()
            n += logits.numel()
            probs.index_add_(0, pos, torch.sigmoid(logits).double())
            count.index_add_(0, pos, torch.ones(len(pos), dtype=torch.float64))
    seen = count > 0
    try:
        scores = tagging_scores(labels[seen].numpy(), (probs[seen] / count[seen, None]).numpy())
    except ValueError:             # too few clips seen (ci profile) to score any tag
        scores = None
    return loss_sum / max(n, 1), scores


def _train_epochs(model: nn.Module, recipe: Recipe, model_name: str, loader: DataLoader,
                  generator: torch.Generator, step: Callable, validate: Callable, history: EpochRecord,
                  run_spec: dict, best_checkpoint: Callable, checkpoint_dir: str | os.PathLike | None,
                  resume: bool, device: torch.device, progress: bool, loss_name: str) -> EpochRecord:
    """The epoch loop shared by :func:`fit` (tagging) and :func:`fit_triplet`
    (metric learning): optimiser and plateau schedule, mixed precision, the
    NaN stop, per-epoch validation, best-epoch selection, stopping rules,
    atomic checkpoints and exact resume. What differs is passed in:

    - ``step(batch, autocast) -> (loss, n_examples, n_clips)``: the loss of
      one training batch (the model's forward pass inside ``autocast()``);
    - ``validate() -> fields``: the values of the ``history`` fields to
      append for the epoch (the score among them);
    - ``history``: an empty :class:`EpochRecord` of the run's kind, whose
      ``score_field`` and ``mode`` say which score selects the best epoch;
    - ``run_spec``: what identifies the run in ``last.pt`` (a resumed run must
      match it); ``best_checkpoint(epoch, fields)``: the ``best.pt`` payload.
    """
    optimizer = make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=history.mode, factor=recipe.plateau_factor,
                                                           patience=recipe.plateau_patience)
    use_amp = recipe.amp and device.type == "cuda"
    scaler = _grad_scaler() if use_amp else None
    start_epoch = 1
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    if last_path and resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if any(state.get(key) != value for key, value in run_spec.items()):
            raise ValueError(f"{last_path} belongs to another run (model, recipe or loss differ): delete it or "
                             f"pass another checkpoint_dir, or resume=False to start over")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = type(history)(**state["history"])
        start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng"])
        generator.set_state(state["generator"])
        if progress:
            print(f"resuming {model_name} after epoch {state['epoch']} from {last_path}")
    if history.stopped:
        start_epoch = recipe.epochs + 1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if ckpt_dir and (ckpt_dir / "best.pt").exists() and start_epoch > 1:
        best_state = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=True)["state_dict"]

    def autocast():
        return torch.autocast(device_type=device.type, enabled=use_amp)

    epochs = tqdm(range(start_epoch, recipe.epochs + 1), desc=f"training {model_name}", unit="epoch",
                  disable=not progress, initial=start_epoch - 1, total=recipe.epochs)
    for epoch in epochs:
        model.train()
        n_batches = len(loader) if recipe.max_batches is None else min(recipe.max_batches, len(loader))
        loss_sum, seen, clips, t0 = 0.0, 0, 0, time.perf_counter()
        batches = tqdm(loader, total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
                       disable=not progress)
        for b, batch in enumerate(batches):
            if b >= n_batches:
                break
            loss, n_examples, n_clips = step(batch, autocast)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the {loss_name} of {model_name} became {loss.item()} in epoch {epoch}, batch {b}: lower the "
                    f"learning rate (now {optimizer.param_groups[0]['lr']:g}) or check the input data."
                    + (f" Checkpoints in {ckpt_dir} hold the last good epoch." if ckpt_dir else ""))
            optimizer_step(loss, optimizer, scaler)
            loss_sum += loss.item() * n_examples
            seen += n_examples
            clips += n_clips
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}")
        elapsed = time.perf_counter() - t0
        fields = validate()
        score = fields[history.score_field]
        history.epoch.append(epoch)
        history.train_loss.append(loss_sum / max(seen, 1))
        for name, value in fields.items():
            getattr(history, name).append(value)
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.train_clips_per_s.append(clips / elapsed if elapsed > 0 else float("nan"))
        scheduler.step(score)
        if history.best_epoch == epoch:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if ckpt_dir:
                save_checkpoint(ckpt_dir / "best.pt", best_checkpoint(epoch, fields))
        epochs.set_postfix(train_loss=f"{history.train_loss[-1]:.4f}", **{history.score_field: f"{score:.4f}"})
        if optimizer.param_groups[0]["lr"] < recipe.min_lr:
            history.stopped = f"learning rate below {recipe.min_lr:g} after epoch {epoch}"
        elif recipe.early_stopping and epoch - history.best_epoch >= recipe.early_stopping:
            history.stopped = (f"no better {history.score_field.replace('_', ' ')} for {recipe.early_stopping} epochs "
                               f"(epoch {epoch})")
        if ckpt_dir:
            save_checkpoint(last_path, {**run_spec, "epoch": epoch, "state_dict": model.state_dict(),
                                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                        "history": asdict(history), "rng": torch.get_rng_state(),
                                        "generator": generator.get_state()})
        if history.stopped:
            break
    epochs.close()
    model.load_state_dict(best_state)
    return history


def fit(model: nn.Module, data: TaggedAudio, recipe: Recipe = HOMEWORK_RECIPE, model_name: str = "model",
        model_options: dict | None = None, checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
        device: str | torch.device | None = None, progress: bool = True) -> History:
    """Train ``model`` on the train split of ``data`` and select it on the valid split.

    Each epoch: random crops of ``model.input_samples`` samples from every
    training clip (shuffled with a seeded generator), ``BCEWithLogitsLoss``,
    then the validation loss and scores over all validation chunks. The
    learning rate drops on plateaus of the validation loss; training stops
    after ``recipe.epochs``, when the learning rate falls below
    ``recipe.min_lr``, or after ``recipe.early_stopping`` epochs without
    improvement. At the end the model holds the weights of its best epoch.

    With ``checkpoint_dir``, ``last.pt`` (everything needed to resume) is saved
    after every epoch and ``best.pt`` (a model checkpoint, see
    :func:`load_checkpoint`) at every new best; rerunning with ``resume=True``
    continues after the last finished epoch. A NaN or infinite loss raises
    :class:`TrainingDivergedError` and leaves the checkpoints as they were.
    """
    device = choose_device(device)
    generator = seed_everything(recipe.seed)
    model.to(device)
    chunk = getattr(model, "input_samples", 48000)
    train_loader = DataLoader(RandomCropDataset(data, "train", chunk), batch_size=recipe.batch_size, shuffle=True,
                              drop_last=True, generator=generator, num_workers=recipe.num_workers,
                              pin_memory=device.type == "cuda", persistent_workers=recipe.num_workers > 0)
    valid = ChunkDataset(data, "valid", chunk)
    valid_loader = DataLoader(valid, batch_size=recipe.eval_batch_size, shuffle=False,
                              num_workers=recipe.num_workers, pin_memory=device.type == "cuda")
    criterion = nn.BCEWithLogitsLoss()

    def step(batch, autocast):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with autocast():
            logits = model(x)
        return criterion(logits.float(), y), len(x), len(x)

    def validate():
        loss, scores = _valid_pass(model, valid_loader, valid.n_clips, valid.labels, device, recipe.max_batches)
        return {"valid_loss": loss, "valid_roc_auc": scores.roc_auc if scores else float("nan"),
                "valid_pr_auc": scores.pr_auc if scores else float("nan")}

    def best_checkpoint(epoch, fields):
        return model_checkpoint(model, model_name, data.tags, model_options, epoch=epoch,
                                valid_loss=fields["valid_loss"], dataset=data.meta.get("name", ""))

    return _train_epochs(model, recipe, model_name, train_loader, generator, step, validate, History(),
                         {"model_name": model_name, "recipe": asdict(recipe)},
                         best_checkpoint, checkpoint_dir, resume, device, progress, "training loss")


# ----------------------------------------------------------------------------
# Metric learning (Question 3): triplet training and Recall@K
# ----------------------------------------------------------------------------

#: Distances for the triplet loss and for retrieval.
DISTANCES = ("cosine", "euclidean")
#: Which layer gives a model's embedding: ``output``, what ``model(x)``
#: returns (the homework's backbones: a classifier built with ``n_tags = D``
#: ends in a D-dimensional linear projection, ``linear_projection`` returns its
#: projection); ``penultimate``, ``model.embed(x)``, the input of a tagger's
#: last layer (to compare what a tagger learned).
EMBEDDINGS = ("output", "penultimate")


def _closeness(x: torch.Tensor, y: torch.Tensor, distance: str) -> torch.Tensor:
    """Pairwise closeness ``(len(x), len(y))``: cosine similarity, or minus
    the Euclidean distance (with a safe gradient at distance 0)."""
    if distance == "cosine":
        return nn.functional.normalize(x, dim=1) @ nn.functional.normalize(y, dim=1).T
    d2 = x.square().sum(1, keepdim=True) + y.square().sum(1) - 2 * x @ y.T
    return -d2.clamp(min=1e-12).sqrt()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.4,
                 distance: str = "cosine", hard_negatives: float | None = None,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
    """Mean triplet loss of embeddings ``(batch, dim)``.

    ``cosine`` (the homework's): ``relu(margin - cos(a, p) + cos(a, n))``;
    ``euclidean``: ``relu(margin + |a - p| - |a - n|)`` on the raw (not
    normalised) embeddings, as ``torch.nn.TripletMarginLoss``.

    ``hard_negatives`` (a fraction in (0, 1]; ``None``: each triplet's own
    negative, the homework's) mines the batch: the candidate negatives of
    anchor ``i`` are every embedding of the batch (anchors, positives,
    negatives) except its own anchor and positive and the anchors and
    positives of triplets with the same key (``keys``: ``(batch,)``, the tag
    or the song the triplet was drawn for); ``cos(a, n)`` (or ``-|a - n|``)
    becomes the mean closeness of its hardest ``ceil(fraction * candidates)``
    candidates, the ones the model confuses most with the anchor.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    if distance == "cosine":
        close_p = nn.functional.cosine_similarity(anchor, positive, dim=1)
    else:
        close_p = -(anchor - positive).norm(dim=1)
    if hard_negatives is None:
        close_n = (nn.functional.cosine_similarity(anchor, negative, dim=1) if distance == "cosine"
                   else -(anchor - negative).norm(dim=1))
    else:
        if not 0 < hard_negatives <= 1:
            raise ValueError(f"hard_negatives must be a fraction in (0, 1], got {hard_negatives}")
        b = len(anchor)
        close = _closeness(anchor, torch.cat([anchor, positive, negative]), distance)   # (b, 3b)
        excluded = torch.zeros_like(close, dtype=torch.bool)
        own = torch.arange(b, device=anchor.device)
        excluded[own, own] = True
        excluded[own, own + b] = True
        if keys is not None:
            same = keys.to(anchor.device)[:, None] == keys.to(anchor.device)[None, :]
            excluded[:, :b] |= same
            excluded[:, b:2 * b] |= same
        k = max(1, math.ceil(hard_negatives * int((~excluded).sum(1).min())))
        close_n = close.masked_fill(excluded, -math.inf).topk(k, dim=1).values.mean(1)
    return torch.relu(margin - close_p + close_n).mean()


class _Embedder(nn.Module):
    """``forward`` = the wrapped model's embedding (see :data:`EMBEDDINGS`),
    so that :func:`predict` with ``output='logits'`` averages raw,
    unnormalised embeddings."""

    def __init__(self, model: nn.Module, embedding: str = "output") -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}: use one of {EMBEDDINGS}")
        self.model, self.penultimate = model, embedding == "penultimate"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x) if self.penultimate else self.model(x)


def similarity_matrix(embeddings: np.ndarray, distance: str = "cosine") -> np.ndarray:
    """``(N, N)`` similarities of ``(N, dim)`` embeddings, higher is closer:
    cosine similarity, or minus the Euclidean distance."""
    e = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    if distance == "cosine":
        e = nn.functional.normalize(e, dim=1)
        return (e @ e.T).numpy()
    if distance == "euclidean":
        return (-torch.cdist(e, e)).numpy()
    raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")


def evaluate_retrieval(model: nn.Module, data: TaggedAudio, split: str = "test", distance: str = "cosine",
                       ks: tuple[int, ...] = (1, 2, 4, 8), chunk_samples: int | None = None, batch_size: int = 64,
                       device: str | torch.device | None = None, progress: bool = True,
                       max_batches: int | None = None,
                       embedding: str = "output") -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Multi-label Recall@K of ``model``'s clip embeddings on ``split``.

    A clip's embedding is the mean of its chunk embeddings (``embedding``:
    ``output``, what the model returns, or ``penultimate``, ``model.embed``;
    see :data:`EMBEDDINGS`); clips are ranked by cosine similarity or Euclidean distance of these
    (raw) means, the query itself excluded. Returns ``({'R@1': ..., ...},
    embeddings (n_clips, dim), labels (n_clips, n_tags))``, the embeddings
    L2-normalised for ``cosine`` and raw for ``euclidean``. ``max_batches``
    (the ``ci`` profile) keeps only the clips of the first batches.
    """
    from .metrics import recall_at_ks

    chunks = ChunkDataset(data, split, chunk_samples or getattr(model, "input_samples", 48000))
    emb = predict(_Embedder(model, embedding), chunks, batch_size, device, "logits", progress,
                  max_batches=max_batches)
    y = chunks.labels.numpy()
    if max_batches is not None:
        seen = sorted({chunks.items[j][0] for j in range(min(len(chunks), max_batches * batch_size))})
        emb, y = emb[seen], y[seen]
    if distance == "cosine":
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    ks = tuple(k for k in ks if k < len(emb))
    if not ks:
        raise ValueError(f"only {len(emb)} clips in {split!r}: too few for Recall@K")
    return recall_at_ks(similarity_matrix(emb, distance), y, ks), emb, y


def _output_names(model: nn.Module, tags: list[str]) -> list[str]:
    """Names of a model's outputs for its checkpoint (:func:`load_checkpoint`
    rebuilds a classifier with ``n_tags = len(tags)``): the dataset's tags for
    a tagger, ``embedding_0`` ... for a classifier whose outputs form an
    embedding of another size."""
    n_out = getattr(model, "n_tags", None)
    return list(tags) if n_out in (None, len(tags)) else [f"embedding_{i}" for i in range(n_out)]


@dataclass
class TripletHistory(EpochRecord):
    """Per-epoch record of a metric-learning run.

    ``valid_recall`` holds each epoch's ``{'R@1': ..., 'R@8': ...}`` on the
    validation split; ``valid_score`` their mean, whose highest value selects
    the best epoch.
    """

    score_field: ClassVar[str] = "valid_score"
    mode: ClassVar[str] = "max"

    valid_recall: list[dict] = field(default_factory=list)
    valid_score: list[float] = field(default_factory=list)


def fit_triplet(model: nn.Module, data: TaggedAudio, recipe: Recipe = HOMEWORK_RECIPE, model_name: str = "model",
                model_options: dict | None = None, checkpoint_dir: str | os.PathLike | None = None,
                resume: bool = True, device: str | torch.device | None = None, progress: bool = True,
                margin: float = 0.4, distance: str = "cosine", sampling: str = "tag",
                embedding: str = "output", hard_negatives: float | None = None) -> TripletHistory:
    """Train ``model`` as an embedder with a triplet loss (metric learning).

    Each epoch draws as many triplets as the train split has clips (see
    :func:`helpers.datasets.triplet_dataset`: ``sampling='tag'`` is the homework's), each clip a
    random crop of ``model.input_samples`` samples; anchor, positive and
    negative go through the model in one batch of ``3 * batch_size`` and
    :func:`triplet_loss` (``margin``, ``distance``) is minimised on their
    embeddings (``embedding='output'``: what the model returns, so a
    classifier built with ``n_tags=D`` learns a D-dimensional embedding, the
    homework's backbones; ``'penultimate'``: ``model.embed``);
    ``hard_negatives`` mines the batch for harder negatives (see
    :func:`triplet_loss`; ``None``, the homework's, uses each triplet's
    own). After every epoch the validation Recall@1/2/4/8
    (:func:`evaluate_retrieval`, same ``distance`` and ``embedding``) is
    measured; its mean selects the best epoch and drives ReduceLROnPlateau
    (mode max). Stopping rules, checkpoints
    (``last.pt`` to resume, ``best.pt`` a model checkpoint with
    ``trained_as='embedder'``), resuming and the NaN stop are those of
    :func:`fit`. At the end the model holds the weights of its best epoch.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    embedder = _Embedder(model, embedding)
    device = choose_device(device)
    generator = seed_everything(recipe.seed)
    model.to(device)
    chunk = getattr(model, "input_samples", 48000)
    loader = DataLoader(triplet_dataset(data, "train", chunk, sampling), batch_size=recipe.batch_size, shuffle=True,
                        drop_last=True, generator=generator, num_workers=recipe.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=recipe.num_workers > 0)
    loss_spec = {"margin": margin, "distance": distance, "sampling": sampling, "embedding": embedding,
                 "hard_negatives": hard_negatives}

    def step(batch, autocast):
        a, p, n, keys = batch
        with autocast():
            z = embedder(torch.cat([a, p, n]).to(device, non_blocking=True))
        za, zp, zn = z.float().chunk(3)
        return triplet_loss(za, zp, zn, margin, distance, hard_negatives, keys), len(a), 3 * len(a)

    def validate():
        recall, _, _ = evaluate_retrieval(model, data, "valid", distance, batch_size=recipe.eval_batch_size,
                                          device=device, progress=False, max_batches=recipe.max_batches,
                                          embedding=embedding)
        return {"valid_recall": recall, "valid_score": float(np.mean(list(recall.values())))}

    def best_checkpoint(epoch, fields):
        return model_checkpoint(model, model_name, _output_names(model, data.tags), model_options, epoch=epoch,
                                valid_recall=fields["valid_recall"], trained_as="embedder", loss=loss_spec,
                                dataset_tags=data.tags, dataset=data.meta.get("name", ""))

    return _train_epochs(model, recipe, model_name, loader, generator, step, validate, TripletHistory(),
                         {"model_name": model_name, "recipe": asdict(recipe), "loss": loss_spec},
                         best_checkpoint, checkpoint_dir, resume, device, progress, "triplet loss")
