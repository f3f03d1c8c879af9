"""Shared fixtures: a tiny synthetic dataset made once per test session, and
the course's default synthetic dataset (made when missing: no test needs
`make data`)."""
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


@pytest.fixture(scope="session")
def default_synthetic():
    """The course's default synthetic dataset at ``data_root("synthetic")``
    (``$COURSE_DATA/synthetic`` when set), through the notebooks' own
    ``open_dataset``: generated (about 45 s on 2 cores) when it is missing or
    was made by another generator version, else opened as it is."""
    from helpers.course.setup import open_dataset

    return open_dataset("synthetic", progress=False)


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """A warning would print to stderr in a notebook: treat it as a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
