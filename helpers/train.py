"""Training and evaluation: seeding, devices, run profiles, the training loop,
chunk-averaged prediction, and checkpoints.

The homework's recipe is :data:`HOMEWORK_RECIPE` (SGD with Nesterov momentum,
ReduceLROnPlateau on the validation loss, stop when the learning rate falls
below 1e-5). :func:`fit` trains any classifier of :mod:`helpers.models` with
``BCEWithLogitsLoss`` on random crops, evaluates every epoch on all chunks of
the validation clips, keeps the best model by validation loss, saves
checkpoints atomically, resumes an interrupted run, and stops with a clear
message when the loss becomes NaN.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

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

from .datasets import ChunkDataset, RandomCropDataset, TaggedAudio
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
class History:
    """Per-epoch record of a training run (lists of equal length)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_roc_auc: list[float] = field(default_factory=list)
    valid_pr_auc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    train_clips_per_s: list[float] = field(default_factory=list)
    stopped: str = ""

    @property
    def best_epoch(self) -> int:
        return self.epoch[int(np.argmin(self.valid_loss))] if self.valid_loss else 0


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
    optimizer = make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=recipe.plateau_factor,
                                                           patience=recipe.plateau_patience)
    use_amp = recipe.amp and device.type == "cuda"
    scaler = _grad_scaler() if use_amp else None
    criterion = nn.BCEWithLogitsLoss()
    history, best_loss, start_epoch = History(), math.inf, 1
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    if last_path and resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if state.get("model_name") != model_name or state.get("recipe") != asdict(recipe):
            raise ValueError(f"{last_path} belongs to another run (model or recipe differ): delete it or "
                             f"pass another checkpoint_dir, or resume=False to start over")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = History(**state["history"])
        best_loss = min(history.valid_loss, default=math.inf)
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

    epochs = tqdm(range(start_epoch, recipe.epochs + 1), desc=f"training {model_name}", unit="epoch",
                  disable=not progress, initial=start_epoch - 1, total=recipe.epochs)
    for epoch in epochs:
        model.train()
        n_batches = len(train_loader) if recipe.max_batches is None else min(recipe.max_batches, len(train_loader))
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        batches = tqdm(train_loader, total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
                       disable=not progress)
        for b, (x, y) in enumerate(batches):
            if b >= n_batches:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                loss = criterion(model(x).float(), y)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the training loss of {model_name} became {loss.item()} in epoch {epoch}, batch {b}: "
                    f"lower the learning rate (now {optimizer.param_groups[0]['lr']:g}) or check the input data. "
                    f"Checkpoints in {ckpt_dir} hold the last good epoch." if ckpt_dir else
                    f"the training loss of {model_name} became {loss.item()} in epoch {epoch}, batch {b}: "
                    f"lower the learning rate (now {optimizer.param_groups[0]['lr']:g}) or check the input data.")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(x)
            seen += len(x)
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}")
        elapsed = time.perf_counter() - t0
        valid_loss, scores = _valid_pass(model, valid_loader, valid.n_clips, valid.labels, device, recipe.max_batches)
        lr = optimizer.param_groups[0]["lr"]
        history.epoch.append(epoch)
        history.train_loss.append(loss_sum / max(seen, 1))
        history.valid_loss.append(valid_loss)
        history.valid_roc_auc.append(scores.roc_auc if scores else float("nan"))
        history.valid_pr_auc.append(scores.pr_auc if scores else float("nan"))
        history.lr.append(lr)
        history.train_clips_per_s.append(seen / elapsed if elapsed > 0 else float("nan"))
        scheduler.step(valid_loss)
        if valid_loss < best_loss:
            best_loss = valid_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if ckpt_dir:
                save_checkpoint(ckpt_dir / "best.pt", model_checkpoint(
                    model, model_name, data.tags, model_options, epoch=epoch, valid_loss=valid_loss,
                    dataset=data.meta.get("name", "")))
        epochs.set_postfix(train_loss=f"{history.train_loss[-1]:.4f}", valid_loss=f"{valid_loss:.4f}",
                           valid_auc=f"{history.valid_roc_auc[-1]:.3f}")
        if optimizer.param_groups[0]["lr"] < recipe.min_lr:
            history.stopped = f"learning rate below {recipe.min_lr:g} after epoch {epoch}"
        elif recipe.early_stopping and epoch - history.best_epoch >= recipe.early_stopping:
            history.stopped = f"no better validation loss for {recipe.early_stopping} epochs (epoch {epoch})"
        if ckpt_dir:
            save_checkpoint(last_path, {"model_name": model_name, "recipe": asdict(recipe), "epoch": epoch,
                                        "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "history": asdict(history),
                                        "rng": torch.get_rng_state(), "generator": generator.get_state()})
        if history.stopped:
            break
    epochs.close()
    model.load_state_dict(best_state)
    return history


# ----------------------------------------------------------------------------
# Metric learning (Question 3): triplet training and Recall@K
# ----------------------------------------------------------------------------

from .datasets import TripletDataset  # noqa: E402  (this section was added after the training loop)

#: Ways to draw triplets: ``tag`` is the homework's (a tag uniformly at random,
#: then two clips with it and one without); ``tag_frequency`` draws the tag in
#: proportion to its number of clips, so frequent tags, which most queries
#: carry, are trained on as often as they are asked about.
TRIPLET_SAMPLINGS = ("tag", "tag_frequency")
#: Distances for the triplet loss and for retrieval.
DISTANCES = ("cosine", "euclidean")
#: Which layer gives a model's embedding: ``output``, what ``model(x)``
#: returns (the homework's backbones: a classifier built with ``n_tags = D``
#: ends in a D-dimensional linear projection, ``linear_projection`` returns its
#: projection); ``penultimate``, ``model.embed(x)``, the input of a tagger's
#: last layer (to compare what a tagger learned).
EMBEDDINGS = ("output", "penultimate")


class TagFrequencyTripletDataset(TripletDataset):
    """:class:`helpers.datasets.TripletDataset` with the tag drawn in
    proportion to its number of positive clips in the split (instead of
    uniformly): ``P(tag) = n_clips(tag) / sum(n_clips)``. Items are the same:
    anchor, positive, negative waveforms ``(chunk_samples,)`` and the tag index.
    """

    def __init__(self, data: "TaggedAudio | str | os.PathLike", split: str, chunk_samples: int = 48000) -> None:
        super().__init__(data, split, chunk_samples)
        self.tag_weights = torch.tensor([float(len(self.positives[t])) for t in self.usable_tags])

    def sample_indices(self) -> tuple[int, int, int, int]:
        tag = self.usable_tags[int(torch.multinomial(self.tag_weights, 1))]
        pos = self.positives[tag]
        a, p = torch.randperm(len(pos))[:2].tolist()
        n = int(self.negatives[tag][int(torch.randint(len(self.negatives[tag]), ()))])
        return int(pos[a]), int(pos[p]), n, tag


def triplet_dataset(data: TaggedAudio, split: str, chunk_samples: int = 48000,
                    sampling: str = "tag") -> TripletDataset:
    """The triplets of ``split`` drawn with ``sampling`` (see :data:`TRIPLET_SAMPLINGS`)."""
    if sampling == "tag":
        return TripletDataset(data, split, chunk_samples)
    if sampling == "tag_frequency":
        return TagFrequencyTripletDataset(data, split, chunk_samples)
    raise ValueError(f"unknown triplet sampling {sampling!r}: use one of {TRIPLET_SAMPLINGS}")


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.4,
                 distance: str = "cosine") -> torch.Tensor:
    """Mean triplet loss of embeddings ``(batch, dim)``.

    ``cosine`` (the homework's): ``relu(margin - cos(a, p) + cos(a, n))``;
    ``euclidean``: ``relu(margin + |a - p| - |a - n|)`` on the raw (not
    normalised) embeddings, as ``torch.nn.TripletMarginLoss``.
    """
    if distance == "cosine":
        gap = (nn.functional.cosine_similarity(anchor, negative, dim=1)
               - nn.functional.cosine_similarity(anchor, positive, dim=1))
    elif distance == "euclidean":
        gap = (anchor - positive).norm(dim=1) - (anchor - negative).norm(dim=1)
    else:
        raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    return torch.relu(margin + gap).mean()


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
class TripletHistory:
    """Per-epoch record of a metric-learning run (lists of equal length).

    ``valid_recall`` holds each epoch's ``{'R@1': ..., 'R@8': ...}`` on the
    validation split; ``valid_score`` their mean, which selects the best epoch.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_recall: list[dict] = field(default_factory=list)
    valid_score: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    train_clips_per_s: list[float] = field(default_factory=list)
    stopped: str = ""

    @property
    def best_epoch(self) -> int:
        return self.epoch[int(np.argmax(self.valid_score))] if self.valid_score else 0


def fit_triplet(model: nn.Module, data: TaggedAudio, recipe: Recipe = HOMEWORK_RECIPE, model_name: str = "model",
                model_options: dict | None = None, checkpoint_dir: str | os.PathLike | None = None,
                resume: bool = True, device: str | torch.device | None = None, progress: bool = True,
                margin: float = 0.4, distance: str = "cosine", sampling: str = "tag",
                embedding: str = "output") -> TripletHistory:
    """Train ``model`` as an embedder with a triplet loss (metric learning).

    Each epoch draws as many triplets as the train split has clips (see
    :func:`triplet_dataset`: ``sampling='tag'`` is the homework's), each clip a
    random crop of ``model.input_samples`` samples; anchor, positive and
    negative go through the model in one batch of ``3 * batch_size`` and
    :func:`triplet_loss` (``margin``, ``distance``) is minimised on their
    embeddings (``embedding='output'``: what the model returns, so a
    classifier built with ``n_tags=D`` learns a D-dimensional embedding, the
    homework's backbones; ``'penultimate'``: ``model.embed``). After every
    epoch the validation Recall@1/2/4/8 (:func:`evaluate_retrieval`, same
    ``distance`` and ``embedding``) is measured; its mean selects the best epoch and
    drives ReduceLROnPlateau (mode max). Stopping rules, checkpoints
    (``last.pt`` to resume, ``best.pt`` a model checkpoint with
    ``trained_as='embedder'``), resuming and the NaN stop are those of
    :func:`fit`. At the end the model holds the weights of its best epoch.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: use one of {DISTANCES}")
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}: use one of {EMBEDDINGS}")
    device = choose_device(device)
    generator = seed_everything(recipe.seed)
    model.to(device)
    chunk = getattr(model, "input_samples", 48000)
    triplets = triplet_dataset(data, "train", chunk, sampling)
    loader = DataLoader(triplets, batch_size=recipe.batch_size, shuffle=True, drop_last=True, generator=generator,
                        num_workers=recipe.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=recipe.num_workers > 0)
    optimizer = make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=recipe.plateau_factor,
                                                           patience=recipe.plateau_patience)
    use_amp = recipe.amp and device.type == "cuda"
    scaler = _grad_scaler() if use_amp else None
    loss_spec = {"margin": margin, "distance": distance, "sampling": sampling, "embedding": embedding}
    history, best_score, start_epoch = TripletHistory(), -math.inf, 1
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    if last_path and resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if (state.get("model_name") != model_name or state.get("recipe") != asdict(recipe)
                or state.get("loss") != loss_spec):
            raise ValueError(f"{last_path} belongs to another run (model, recipe or loss differ): delete it or "
                             f"pass another checkpoint_dir, or resume=False to start over")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = TripletHistory(**state["history"])
        best_score = max(history.valid_score, default=-math.inf)
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

    epochs = tqdm(range(start_epoch, recipe.epochs + 1), desc=f"training {model_name} (triplets)", unit="epoch",
                  disable=not progress, initial=start_epoch - 1, total=recipe.epochs)
    for epoch in epochs:
        model.train()
        n_batches = len(loader) if recipe.max_batches is None else min(recipe.max_batches, len(loader))
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        batches = tqdm(loader, total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
                       disable=not progress)
        for b, (a, p, n, _tag) in enumerate(batches):
            if b >= n_batches:
                break
            x = torch.cat([a, p, n]).to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                za, zp, zn = _Embedder(model, embedding)(x).float().chunk(3)
            loss = triplet_loss(za, zp, zn, margin, distance)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the triplet loss of {model_name} became {loss.item()} in epoch {epoch}, batch {b}: "
                    f"lower the learning rate (now {optimizer.param_groups[0]['lr']:g}) or check the input data.")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(a)
            seen += len(a)
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}")
        elapsed = time.perf_counter() - t0
        recall, _, _ = evaluate_retrieval(model, data, "valid", distance, batch_size=recipe.eval_batch_size,
                                          device=device, progress=False, max_batches=recipe.max_batches,
                                          embedding=embedding)
        score = float(np.mean(list(recall.values())))
        history.epoch.append(epoch)
        history.train_loss.append(loss_sum / max(seen, 1))
        history.valid_recall.append(recall)
        history.valid_score.append(score)
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.train_clips_per_s.append(3 * seen / elapsed if elapsed > 0 else float("nan"))
        scheduler.step(score)
        if score > best_score:
            best_score = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if ckpt_dir:
                save_checkpoint(ckpt_dir / "best.pt", model_checkpoint(
                    model, model_name, _output_names(model, data.tags), model_options, epoch=epoch,
                    valid_recall=recall, trained_as="embedder", loss=loss_spec, dataset_tags=data.tags,
                    dataset=data.meta.get("name", "")))
        epochs.set_postfix(train_loss=f"{history.train_loss[-1]:.4f}", valid_mean_recall=f"{score:.3f}")
        if optimizer.param_groups[0]["lr"] < recipe.min_lr:
            history.stopped = f"learning rate below {recipe.min_lr:g} after epoch {epoch}"
        elif recipe.early_stopping and epoch - history.best_epoch >= recipe.early_stopping:
            history.stopped = f"no better validation Recall@K for {recipe.early_stopping} epochs (epoch {epoch})"
        if ckpt_dir:
            save_checkpoint(last_path, {"model_name": model_name, "recipe": asdict(recipe), "loss": loss_spec,
                                        "epoch": epoch, "state_dict": model.state_dict(),
                                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                        "history": asdict(history), "rng": torch.get_rng_state(),
                                        "generator": generator.get_state()})
        if history.stopped:
            break
    epochs.close()
    model.load_state_dict(best_state)
    return history
