"""Shared fixtures: a tiny synthetic dataset made once per test session."""
from __future__ import annotations

import warnings

import pytest

from helpers.prepare.synth import SynthConfig, prepare_synthetic

TINY = SynthConfig(n_songs=16, clips_per_song=2, clip_seconds=3.5, seed=1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Folder of a 32-clip synthetic dataset with 3.5 s clips."""
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    prepare_synthetic(root, TINY, workers=1, progress=False)
    return root


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """A warning would print to stderr in a notebook: treat it as a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
