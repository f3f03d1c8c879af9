"""Helpers added for notebooks 00-03: progress-bar choice, opening a dataset,
and a silent tqdm import inside a Jupyter kernel without ipywidgets."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.course import open_dataset
from helpers.config import choose_progress
from helpers.data import DatasetNotReadyError, TaggedAudio

REPO = Path(__file__).resolve().parent.parent


def test_progress_is_off_in_ci_and_follows_the_environment(monkeypatch):
    monkeypatch.delenv("COURSE_PROGRESS", raising=False)
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert choose_progress("ci") is False
    assert choose_progress("cpu") is True and choose_progress("gpu") is True
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    assert choose_progress() is False
    for off in ("0", "false", "No", " off "):
        monkeypatch.setenv("COURSE_PROGRESS", off)
        assert choose_progress("cpu") is False
    monkeypatch.setenv("COURSE_PROGRESS", "1")
    assert choose_progress("ci") is True
    monkeypatch.setenv("COURSE_PROGRESS", "")
    assert choose_progress("cpu") is True


def test_open_dataset_opens_a_prepared_synthetic_set(tiny_root):
    data = open_dataset("synthetic", tiny_root, progress=False)      # already prepared: returned as it is
    assert isinstance(data, TaggedAudio) and len(data) == 32


def test_open_dataset_explains_a_missing_mtat(tmp_path):
    with pytest.raises(DatasetNotReadyError, match="prepare"):
        open_dataset("mtat", tmp_path / "mtat")
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset("gtzan", tmp_path)


def _import_in_fake_kernel(first_import: str) -> list[str]:
    """Run ``first_import`` then ``from tqdm.auto import tqdm`` in a Python
    that looks like a Jupyter kernel without ipywidgets; returns [number of
    warnings, module of the tqdm class]."""
    code = (
        "import sys, warnings\n"
        "sys.modules['ipywidgets'] = None\n"          # as if ipywidgets were not installed
        "import ipykernel.zmqshell\n"                 # what tqdm looks for to detect a Jupyter kernel
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    {first_import}\n"
        "    from tqdm.auto import tqdm\n"
        "print(len(caught), tqdm.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_importing_helpers_in_a_kernel_without_ipywidgets_gives_no_warning():
    """tqdm.auto warns 'IProgress not found' when first imported in a Jupyter
    kernel without ipywidgets; helpers.train imports it silently (the warning
    would land on a notebook's stderr, which nbval compares) and text bars
    are used."""
    assert _import_in_fake_kernel("import tqdm.auto") == ["1", "tqdm.asyncio"]     # the warning exists...
    assert _import_in_fake_kernel("import helpers.train") == ["0", "tqdm.asyncio"]   # ...and is silenced
