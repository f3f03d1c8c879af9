"""The set-up of a notebook: making the chosen dataset ready in this runtime.

The synthetic set is generated when it is missing or was made by another
version of the generator (about 30 s, e.g. in a fresh Colab runtime);
MagnaTagATune is prepared by ``python -m helpers prepare mtat`` (notebook 00),
and a missing one is an error that says so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import DATASETS, data_root
from ..data import TaggedAudio
from ..prepare.mtat import summary_line
from ..prepare.synth import GENERATOR_VERSION, SynthConfig, prepare_synthetic

__all__ = ["open_dataset", "summary_line"]


def open_dataset(name: str = "synthetic", root: str | os.PathLike | None = None, progress: bool = True) -> TaggedAudio:
    """The prepared dataset ``name`` at ``root`` (default
    :func:`helpers.config.data_root`). The synthetic set is generated first
    when missing or stale (see :func:`helpers.prepare.synth.prepare_synthetic`);
    a missing MTAT raises ``DatasetNotReadyError`` with the command that
    prepares it (``python -m helpers prepare mtat``, see notebook 00)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose 'synthetic' or 'mtat'")
    root = Path(root) if root is not None else data_root(name)
    if name == "synthetic":
        meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").exists() else {}
        if meta.get("generator_version") != GENERATOR_VERSION:          # missing, unfinished or stale
            config = meta.get("config")
            cfg = SynthConfig(**{**config, "split_fractions": tuple(config["split_fractions"])}) if config else \
                SynthConfig()
            prepare_synthetic(root, cfg, progress=progress)
    return TaggedAudio(root)
