"""The set-up of a notebook: where its durable state lives, and the chosen
dataset made ready in this runtime.

Locally, results, checkpoints and the MTAT download stay in the repository's
folders (``output/``, ``checkpoints/``, ``data/downloads``). In Colab, where
every notebook gets a fresh runtime, :func:`setup` mounts Google Drive and
keeps them in one folder there (``MyDrive/music-auto-tagging``), so that
notebook 02 finds what notebook 01 recorded and notebook 06 the best model of
03 or 05; the dataset itself is prepared on the runtime's local disk, which is
much faster: the synthetic set is generated (when missing or stale), MTAT is
decoded from the download kept on Drive (downloaded there the first time).
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from ..config import DATASETS, DRIVE_FOLDER, choose_dataset, choose_mtat_split, data_root, in_colab, runtime_root
from ..data import TaggedAudio
from ..prepare.mtat import PUBLISHED_SIZES, prepare_mtat, summary_line
from ..prepare.musicnn import PRETRAINED, pretrained_checkpoint, pretrained_model
from ..prepare.synth import GENERATOR_VERSION, SynthConfig, prepare_synthetic

__all__ = ["setup", "open_dataset", "summary_line", "drive_state_folder", "PRETRAINED", "pretrained_checkpoint",
           "pretrained_model"]


def drive_state_folder(folder: str = DRIVE_FOLDER) -> Path:
    """Mount Google Drive (Colab only) and return the course's folder on it,
    ``<runtime>/drive/MyDrive/<folder>``, created when missing."""
    mountpoint = runtime_root() / "drive"
    if not (mountpoint / "MyDrive").is_dir():
        importlib.import_module("google.colab.drive").mount(str(mountpoint))
    state = mountpoint / "MyDrive" / folder
    state.mkdir(parents=True, exist_ok=True)
    return state


def setup(dataset: str | None = None, progress: bool = True, drive_folder: str = DRIVE_FOLDER,
          mtat_split: str | None = None) -> TaggedAudio:
    """Make ``dataset`` (default: :func:`helpers.config.choose_dataset`) ready
    in this runtime and return it; ``mtat_split``: MTAT's ``clean`` or
    ``homework`` split (default :func:`helpers.config.choose_mtat_split`).

    In Colab: mounts Drive and points the results file, the checkpoints and
    the MTAT download to ``MyDrive/<drive_folder>`` (unless
    ``$COURSE_RESULTS`` / ``$COURSE_CHECKPOINTS`` are set); asks for a GPU
    runtime when MTAT is chosen without one. Everywhere: MagnaTagATune is
    prepared when missing (:func:`helpers.prepare.mtat.prepare_mtat`:
    resumable, about 3 GB to download the first time, then a few minutes of
    decoding) and the synthetic set generated (:func:`open_dataset`).
    """
    dataset = choose_dataset(dataset)
    mtat_split = choose_mtat_split(mtat_split)
    downloads = None
    if in_colab():
        state = drive_state_folder(drive_folder)
        os.environ.setdefault("COURSE_RESULTS", str(state / "output" / "results.jsonl"))
        os.environ.setdefault("COURSE_CHECKPOINTS", str(state / "checkpoints"))
        downloads = state / "downloads"
        if dataset == "mtat" and not torch.cuda.is_available():
            print("MagnaTagATune without a GPU: training will take hours. In Colab choose Runtime > Change runtime "
                  "type > GPU (T4), then run the notebook again from the top.")
    if dataset == "mtat" and not (data_root("mtat") / "meta.json").exists():
        print(f"Preparing MagnaTagATune's {mtat_split} split in this runtime: the first time, a download of about "
              f"3 GB{' kept on Drive' if downloads else ''}; then the mp3 files of the split are unpacked and "
              f"decoded ({sum(PUBLISHED_SIZES[mtat_split].values()):,} clips: minutes, with a progress bar).")
        prepare_mtat(data_root("mtat"), split=mtat_split, download_dir=downloads, progress=progress)
    return open_dataset(dataset, progress=progress)


def open_dataset(name: str = "synthetic", root: str | os.PathLike | None = None, progress: bool = True) -> TaggedAudio:
    """The prepared dataset ``name`` at ``root`` (default
    :func:`helpers.config.data_root`). The synthetic set is generated first
    when missing or stale (see :func:`helpers.prepare.synth.prepare_synthetic`;
    ``$COURSE_SYNTHETIC_SONGS`` makes a smaller one, for quick checks); a
    missing MTAT raises ``DatasetNotReadyError`` with the command that
    prepares it (``python -m helpers prepare mtat``, see notebook 00)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose 'synthetic' or 'mtat'")
    root = Path(root) if root is not None else data_root(name)
    if name == "synthetic":
        meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").exists() else {}
        if meta.get("generator_version") != GENERATOR_VERSION:          # missing, unfinished or stale
            config = meta.get("config")
            songs = int(os.environ.get("COURSE_SYNTHETIC_SONGS") or SynthConfig.n_songs)
            cfg = SynthConfig(**{**config, "split_fractions": tuple(config["split_fractions"])}) if config else \
                SynthConfig(n_songs=songs)
            prepare_synthetic(root, cfg, progress=progress)
    return TaggedAudio(root)
