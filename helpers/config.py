"""Configuration of a course run: one place for every choice a notebook makes
before it starts, and for where the course keeps its files.

- the run profile (``ci``, ``cpu``, ``gpu``: :data:`PROFILES`), the dataset,
  the device and whether to show progress bars, each chosen from an argument,
  else an environment variable, else a default (:func:`choose_profile`...);
- where data, results and checkpoints live (:func:`data_root`,
  :func:`results_path`, :func:`checkpoint_path`);
- the sample rate of everything (:data:`SAMPLE_RATE`), the progress bar
  (:data:`tqdm`), the one way the course writes a file safely
  (:func:`atomic_write`) and how the process reuses freed memory
  (:func:`keep_freed_memory`).

This module imports nothing of the course, so every other module can import it.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # In a Jupyter kernel without ipywidgets, importing tqdm.auto warns "IProgress not found" on stderr (which
    # nbval compares) and falls back to text bars. Every module of the course takes its tqdm from here, and
    # helpers/__init__.py imports this module first, so the warning is silenced whatever is imported first.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["SAMPLE_RATE", "PROFILES", "usable_cpus", "DATASETS", "REPO", "REPO_URL", "DRIVE_FOLDER", "in_colab",
           "runtime_root", "tqdm", "choose_profile", "choose_dataset", "MTAT_SPLITS", "choose_mtat_split",
           "choose_device", "choose_progress", "choose_fast_paths", "keep_freed_memory", "data_root", "results_path",
           "checkpoint_path", "runs_folder", "atomic_write"]

#: Sample rate (Hz) of every waveform in the course: datasets, models, tagging.
SAMPLE_RATE = 16000

#: The repository (the parent of ``helpers/``).
REPO = Path(__file__).resolve().parent.parent

def usable_cpus() -> int:
    """CPUs this process may run on (Colab's GPU runtimes have 2)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: Run profiles. ``ci``: seconds per notebook (two batches of 16, for training
#: and for validation), for nbval.
#: ``cpu``: the default without a GPU, the course in minutes on 2 cores.
#: ``gpu``: the full recipe on MagnaTagATune, with as many DataLoader workers
#: as the machine has CPUs, up to 4 (more draw a warning from PyTorch).
PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"epochs": 1, "max_batches": 2, "batch_size": 16, "eval_batch_size": 16, "num_workers": 0},
    "cpu": {"epochs": 8, "max_batches": None, "batch_size": 16, "num_workers": 0},
    "gpu": {"epochs": 30, "max_batches": None, "batch_size": 16, "num_workers": min(4, usable_cpus())},
}

#: The datasets a notebook can run on.
DATASETS = ("synthetic", "mtat")

#: Where the course lives (the notebooks' first cell clones it in Colab).
REPO_URL = "https://github.com/mir-course/music-auto-tagging"
#: The course's folder on a student's Google Drive: what outlives a Colab
#: runtime (the MTAT download, results, checkpoints).
DRIVE_FOLDER = "music-auto-tagging"


def in_colab() -> bool:
    """Whether this process is a Colab runtime (Colab imports ``google.colab``
    in every kernel it starts)."""
    return "google.colab" in sys.modules


def runtime_root() -> Path:
    """The runtime's own folder: ``/content`` in Colab (``$COURSE_RUNTIME_ROOT``
    overrides it, for tests that play Colab)."""
    return Path(os.environ.get("COURSE_RUNTIME_ROOT") or "/content")


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
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose 'synthetic' or 'mtat'")
    return name


#: MagnaTagATune's splits (see :mod:`helpers.prepare.mtat`): ``clean``, Won et
#: al.'s (15,244 / 1,529 / 4,332 clips, about 20 GB prepared), and
#: ``homework``, the homework's smaller one (6,206 / 1,529 / 1,339 clips,
#: about 8.5 GB: the quick option).
MTAT_SPLITS = ("clean", "homework")


def choose_mtat_split(split: str | None = None) -> str:
    """MagnaTagATune's split: ``split`` if given, else ``$COURSE_MTAT_SPLIT``,
    else ``clean``."""
    split = split or os.environ.get("COURSE_MTAT_SPLIT") or "clean"
    if split not in MTAT_SPLITS:
        raise ValueError(f"unknown MTAT split {split!r}: choose one of {list(MTAT_SPLITS)}")
    return split


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_progress(profile: str | None = None) -> bool:
    """Whether to show progress bars: ``$COURSE_PROGRESS`` when set (``0``,
    ``false``, ``no`` or ``off`` for no), else yes except in the ``ci``
    profile. ``python -m helpers run`` sets it to ``0``: bars recorded by a
    headless run are noise, and without ipywidgets they go to stderr."""
    value = os.environ.get("COURSE_PROGRESS", "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    return choose_profile(profile) != "ci"


def choose_fast_paths(enabled: bool | None = None) -> bool:
    """Whether training and evaluation use the processor's fast paths (mixed
    precision where the hardware computes it natively, the channels-last
    layout of 2D convolutions; see :func:`helpers.train.amp_dtype`):
    ``enabled`` if given, else ``$COURSE_FAST_PATHS`` when set (``0``,
    ``false``, ``no`` or ``off`` for no), else yes."""
    if enabled is not None:
        return bool(enabled)
    value = os.environ.get("COURSE_FAST_PATHS", "").strip().lower()
    return value not in ("0", "false", "no", "off")


#: glibc's ``mallopt`` parameters (``malloc.h``), and its settings in a
#: process that has freed large blocks: its dynamic threshold for ``mmap``
#: has risen to its maximum, 32 MB, and the trim threshold to twice that.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 * 2 ** 20, _M_TRIM_THRESHOLD: 64 * 2 ** 20}


def keep_freed_memory(enabled: bool = True) -> bool:
    """Make glibc's ``malloc`` (Linux) keep the memory that PyTorch frees for
    the next tensors, instead of handing it back to the operating system
    (``enabled=False``: glibc's default behaviour again, as it stands once a
    process has freed large blocks). Returns whether it applied.

    By default glibc serves every block of over 32 MB with a fresh ``mmap``
    and unmaps it when freed; a training step allocates and frees its
    activations and gradients each time, so the kernel has to fault in and
    zero their pages again at every step: 230 MB a step for the Figure 1 CNN,
    whose first layer makes tensors of 37 MB. Without ``mmap`` and without
    trimming, freed blocks are reused: training steps of the 2D CNNs and of
    musicnn run up to 2 times faster on a CPU. The price: the process keeps
    its peak memory until it ends. ``import helpers`` calls it, unless
    ``$COURSE_FAST_PATHS`` turns the fast paths off. Nothing happens where
    the C library is not glibc (macOS, Windows), and the call changes
    nothing under an allocator preloaded in glibc's place (tcmalloc,
    jemalloc), which keep freed memory themselves.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    settings = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2 ** 31 - 1} if enabled else _GLIBC_DEFAULTS
    return all(mallopt(key, value) == 1 for key, value in settings.items())


def data_root(name: str = "synthetic") -> Path:
    """Where a dataset (or the ``downloads`` cache) is prepared by default:
    ``data/<name>`` in the repository, or ``$COURSE_DATA/<name>`` when that
    variable is set."""
    base = os.environ.get("COURSE_DATA")
    return Path(base) / name if base else REPO / "data" / name


def results_path() -> Path:
    """The results file of the current run: ``$COURSE_RESULTS`` or
    ``output/results.jsonl`` in the repository."""
    return Path(os.environ.get("COURSE_RESULTS") or REPO / "output" / "results.jsonl")


def checkpoint_path(name: str, dataset: str = "synthetic") -> Path:
    """Where the course keeps the checkpoint ``name`` trained on ``dataset``:
    ``checkpoints/<dataset>/<name>.pt`` in the repository, or under
    ``$COURSE_CHECKPOINTS`` when set. ``best`` is the course's best tagger,
    used by notebook 06 and ``python -m helpers tag``."""
    base = Path(os.environ.get("COURSE_CHECKPOINTS") or REPO / "checkpoints")
    return base / dataset / f"{name}.pt"


def runs_folder(dataset: str = "synthetic") -> Path:
    """Where the notebooks' training runs keep their checkpoints, one folder
    per run (``runs_dir`` of :func:`helpers.train.fit`), so that a rerun cell
    resumes or loads its run: ``runs/`` beside the checkpoints of ``dataset``
    (see :func:`checkpoint_path`; on Drive in Colab), or
    ``$COURSE_RUNS/<dataset>`` when set (``python -m helpers run`` keeps a
    recorded run's own)."""
    base = os.environ.get("COURSE_RUNS")
    return Path(base) / dataset if base else checkpoint_path("runs", dataset).with_suffix("")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], fsync: bool = False) -> Path:
    """Write ``path`` so that an interruption never leaves it half-written.

    ``write(tmp)`` writes the content to a temporary file beside ``path`` (with
    the same suffix, so that ``np.save`` and friends keep the name); the file
    then replaces ``path`` in one ``os.replace``. ``fsync`` flushes it to disk
    first (for the small files that mark progress). On an error the temporary
    file is removed and ``path`` is left as it was. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
