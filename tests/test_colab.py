"""The Colab path, played here: every notebook 00 -> 06 runs in a fresh
"runtime" (a new kernel, a new empty runtime folder with its own clone of the
course, no data, no results, no checkpoints) where ``google.colab`` is a
stand-in whose Drive is a folder shared by the runtimes. What one notebook
records (results, the best model, the checkpoints of its runs) must reach the
next ones through Drive: once with the synthetic set, once with a fixture MTAT
downloaded from a loopback server into Drive by notebook 00.

The course is cloned from this repository's committed HEAD (as Colab clones
the published one): run it on committed work (CI runs on a fresh clone).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import soundfile as sf
from nbclient import NotebookClient

from helpers.course.run import LocalKernelManager
from mtat_fixtures import FileServer, build_fixture

REPO = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "colab_stub"


def _committed() -> bool:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode == 0


def _play_the_course_in_colab(tmp_path: Path, monkeypatch, dataset: str) -> tuple[Path, dict[str, str]]:
    """Run every notebook, in order, each in a fresh stand-in Colab runtime;
    returns the course's folder on the stand-in Drive and each notebook's
    printed outputs."""
    assert _committed(), "the Colab test clones the repository's HEAD: run it in a git checkout"
    drive = tmp_path / "drive"
    drive.mkdir()
    for key in ("COURSE_RESULTS", "COURSE_CHECKPOINTS", "COURSE_DATA", "COURSE_RUNS", "COURSE_MTAT_SPLIT"):
        monkeypatch.delenv(key, raising=False)         # in Colab only setup() decides where things go
    monkeypatch.setenv("PYTHONPATH", str(STUB))       # the kernel imports the stand-in google.colab
    monkeypatch.setenv("COLAB_STUB_DRIVE", str(drive))
    monkeypatch.setenv("COURSE_REPO_URL", REPO.as_uri())
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    monkeypatch.setenv("COURSE_DATASET", dataset)
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    monkeypatch.setenv("COURSE_SYNTHETIC_SONGS", "40")  # 160 clips: seconds to generate in each runtime
    song = tmp_path / "my song.wav"                     # what the student uploads in notebook 06
    t = np.arange(7 * 44100) / 44100
    sf.write(song, np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], 1), 44100)
    monkeypatch.setenv("COLAB_STUB_UPLOAD", str(song))
    outputs = {}
    for k, path in enumerate(sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))):
        runtime = tmp_path / f"runtime{k}"
        runtime.mkdir()
        monkeypatch.setenv("COURSE_RUNTIME_ROOT", str(runtime))
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, kernel_manager_class=LocalKernelManager, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(runtime)}}).execute()
        outputs[path.name[:2]] = "\n".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                                           for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert (runtime / "music-auto-tagging" / "notebooks" / path.name).is_file()   # it ran from its own clone
        assert not (runtime / "music-auto-tagging" / "output").exists()              # state went to Drive
        assert not (runtime / "music-auto-tagging" / "checkpoints").exists()
    assert os.listdir(drive) == ["music-auto-tagging"]
    return drive / "music-auto-tagging", outputs


def _check_what_the_notebooks_promise(state: Path, outputs: dict[str, str], dataset: str) -> None:
    records = [json.loads(line) for line in (state / "output" / "results.jsonl").read_text().splitlines()]
    assert {r["notebook"] for r in records} == {"01", "02", "03", "04", "05"}
    assert {r["dataset"] for r in records} == {dataset}
    assert (state / "checkpoints" / dataset / "best.pt").is_file()
    runs = {p.name.rsplit("-", 1)[0] for p in (state / "checkpoints" / dataset / "runs").iterdir()}
    assert {"cnn1d", "cnn2d", "cnn2d_tuned", "linear_projection", "musicnn", "short_chunk_res"} <= runs
    assert "1D CNN (homework recipe)" in outputs["02"] and "2D CNN (Figure 1, homework recipe)" in outputs["03"]
    assert "1D CNN (homework recipe)" in outputs["05"]            # the course table saw notebook 01's result
    assert f"drive/MyDrive/music-auto-tagging/checkpoints/{dataset}/best.pt: cnn2d_tuned" in outputs["06"]
    assert "saved by notebook 03" in outputs["06"]                 # the tuned CNN of 03 reached 06 through Drive
    assert "file: notebooks/my song.wav" in outputs["06"] and "my song.wav (7.0 s" in outputs["06"]  # uploaded, tagged
    assert all("expected: " in outputs[n] for n in ("01", "02", "03", "04", "05"))   # time told before training


def test_every_notebook_in_its_own_fresh_colab_runtime_with_state_on_drive(tmp_path, monkeypatch):
    state, outputs = _play_the_course_in_colab(tmp_path, monkeypatch, "synthetic")
    _check_what_the_notebooks_promise(state, outputs, "synthetic")


def test_the_course_on_mtat_in_colab_downloads_once_into_drive_and_prepares_each_runtime(tmp_path, monkeypatch):
    """``DATASET="mtat"``: notebook 00 downloads MTAT (a fixture in its exact
    format, 29.124 s clips, served on 127.0.0.1) into Drive; every later
    runtime prepares it from there, without a download."""
    fx = build_fixture(tmp_path / "fixture", clips_per_folder=4, seconds=29.124)
    with FileServer(fx.files) as server:
        monkeypatch.setenv("COURSE_MTAT_URL", server.url)
        monkeypatch.setenv("COURSE_MTAT_MD5", str(fx.md5_file))
        state, outputs = _play_the_course_in_colab(tmp_path, monkeypatch, "mtat")
    assert sorted(server.names(200)) == sorted(fx.files)          # each file downloaded once, by notebook 00
    assert sorted(p.name for p in (state / "downloads").iterdir()) == sorted(fx.files)
    assert "MagnaTagATune, clean split: 64 clips" in outputs["00"]
    _check_what_the_notebooks_promise(state, outputs, "mtat")
