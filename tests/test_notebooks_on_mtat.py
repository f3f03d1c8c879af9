"""Every notebook runs unchanged with ``DATASET = "mtat"`` on a dataset in
MagnaTagATune's exact format that is not the real one: a miniature MTAT
(96 clips of 6 s, one clip per song, other tags than the synthetic set's)
prepared from fixture files, executed in the ``ci`` profile."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.course.run import run_notebooks
from helpers.prepare import mtat
from mtat_fixtures import build_fixture

REPO = Path(__file__).resolve().parents[1]


def test_every_notebook_runs_on_a_miniature_mtat(tmp_path, monkeypatch):
    fx = build_fixture(tmp_path / "fixture", clips_per_folder=6, seconds=6.0)
    with pytest.warns(mtat.MTATCountWarning):              # far fewer clips than the published split
        mtat.prepare_mtat(tmp_path / "data" / "mtat", source=fx.dir, mp3_dir=tmp_path / "mp3",
                          checksums=mtat.read_md5_file(fx.md5_file), clip_samples=fx.clip_samples, progress=False,
                          workers=0)
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COURSE_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    for key in ("COURSE_PROFILE", "COURSE_DATASET", "COURSE_RESULTS"):
        monkeypatch.setenv(key, "")                        # run_notebooks sets them: restored after the test
    out = tmp_path / "out"
    status = run_notebooks(REPO / "notebooks", out, profile="ci", dataset="mtat", timeout=600)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert status == 0, summary
    assert "FAILED" not in summary
    recorded = {(r["model"], r["notebook"]) for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {("cnn1d", "01"), ("cnn2d", "02"), ("cnn2d_tuned", "03"), ("linear_projection", "04"),
            ("cnn1d_best_triplets", "04"), ("short_chunk_res", "05")} <= recorded
    assert (tmp_path / "checkpoints" / "mtat" / "best.pt").is_file()          # what notebook 06 tags with
