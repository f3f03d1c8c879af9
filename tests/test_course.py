"""The course's final table and the summary of a course run."""
from __future__ import annotations

import json

import nbformat

from helpers.course.results import course_table, read_results, record_result
from helpers.course.run import run_notebooks


def test_course_table_shows_our_numbers_in_notebook_order_beside_labelled_mtat_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.jsonl"))
    record_result("cnn1d", "01", label="1D CNN", trained_as="tagger", params=16673, train_clips_per_s=1618.6,
                  roc_auc=0.66245, pr_auc=0.3185)
    record_result("short_chunk_res", "05", label="Short-chunk ResNet (width 1/4)", trained_as="tagger",
                  params=762657, train_clips_per_s=12.04, roc_auc=0.8, pr_auc=0.4, **{"R@1": 0.5, "R@8": 0.9})
    record_result("linear_projection", "04", trained_as="embedder", params=73928706, train_clips_per_s=130.6,
                  **{"R@1": 0.51, "R@2": 0.687, "R@4": 0.822, "R@8": 0.898})
    record_result("cnn1d", "01", label="1D CNN", trained_as="tagger", params=16673, train_clips_per_s=1600.0,
                  roc_auc=0.7, pr_auc=0.3)                              # a rerun replaces the first record
    rows = read_results()
    assert len(rows) == 3
    table = course_table(rows).splitlines()
    assert table[0].startswith("| model | nb | trained as | params | train clips/s | ROC-AUC | PR-AUC | R@1")
    assert table[2] == "| 1D CNN | 01 | tagger | 16,673 | 1,600 | 0.700 | 0.300 | - | - | - | - | 0.61 | - | - | H |"
    assert table[4] == ("| Short-chunk ResNet (width 1/4) | 05 | tagger | 762,657 | 12.0 | 0.800 | 0.400 | 0.500 | - | - "
                        "| 0.900 | 0.9129 | 0.4614 | - | W |")
    assert table[3].endswith("| 0.510 | 0.687 | 0.822 | 0.898 | - | - | 0.339/0.478/0.610/0.736 | H |")
    legend = "\n".join(table[5:])
    assert "NOT results of this run" in legend and "Won et al. 2020" in legend
    assert course_table([]).startswith("(no results recorded yet")


def _notebook(cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


def test_a_course_run_times_each_notebook_and_ends_with_the_course_table(tmp_path, monkeypatch):
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    setup = f"import sys\nsys.path.insert(0, {repo!r})\nfrom helpers.course import record_result"
    books = tmp_path / "notebooks"
    books.mkdir()
    nbformat.write(_notebook([setup, "import os\nrecord_result('cnn1d', '01', profile=os.environ['COURSE_PROFILE'], "
                                     "dataset='synthetic', roc_auc=0.66, pr_auc=0.32)"]), books / "01_a.ipynb")
    nbformat.write(_notebook([setup, "raise RuntimeError('broken on purpose')"]), books / "02_b.ipynb")
    nbformat.write(_notebook([setup, "record_result('crnn', '05', profile='cpu', dataset='synthetic', "
                                     "roc_auc=0.73, pr_auc=0.35)"]), books / "05_c.ipynb")
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    for key in ("COURSE_PROFILE", "COURSE_DATASET", "COURSE_RESULTS"):
        monkeypatch.setenv(key, "")            # run_notebooks sets them: restored after the test
    out = tmp_path / "out"
    assert run_notebooks(books, out, profile="ci") == 1                         # 02 failed, the others ran
    summary = (out / "summary.md").read_text()
    assert "| 01_a.ipynb |" in summary and "| 02_b.ipynb |" in summary and "FAILED" in summary
    assert summary.rstrip().splitlines()[-1].startswith("MTAT columns are published figures")
    table = summary[summary.index("## Every model of the course"):]
    assert "| cnn1d | 01 | tagger |" in table
    assert "crnn" not in table                                     # recorded with another profile: left out
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["profile"] == "ci"


def test_read_results_keeps_the_latest_record_and_filters_by_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.jsonl"))
    record_result("cnn1d", "01", profile="ci", dataset="synthetic", roc_auc=0.51)
    record_result("cnn1d", "01", profile="cpu", dataset="synthetic", roc_auc=0.66)    # replaces the ci record
    record_result("cnn2d", "02", profile="ci", dataset="synthetic", roc_auc=0.53)
    record_result("crnn", "05", profile="gpu", dataset="mtat", roc_auc=0.87)
    assert [r["model"] for r in read_results()] == ["cnn1d", "cnn2d", "crnn"]
    assert [(r["model"], r["roc_auc"]) for r in read_results(profile="cpu")] == [("cnn1d", 0.66)]
    assert [r["model"] for r in read_results(profile="ci", dataset="synthetic")] == ["cnn2d"]
    assert [r["model"] for r in read_results(dataset="mtat")] == ["crnn"]
    assert read_results(tmp_path / "missing.jsonl") == []


def test_comparison_table_puts_the_homeworks_mtat_figures_beside_ours_and_labels_them():
    from helpers.course.results import comparison_table
    rows = [{"model": "prior", "label": "prior only", "trained_as": "baseline", "params": 31, "roc_auc": 0.5,
             "pr_auc": 0.17},
            {"model": "cnn1d", "label": "1D CNN", "params": 16673, "epochs": 10, "train_clips_per_s": 878.4,
             "roc_auc": 0.6629, "pr_auc": 0.3159},
            {"model": "cnn2d_tuned", "label": "tuned", "params": 298657, "roc_auc": 0.8467, "pr_auc": 0.5065},
            {"model": "crnn", "label": "CRNN", "roc_auc": 0.7, "pr_auc": 0.3}]
    lines = comparison_table(rows).splitlines()
    assert "homework's MTAT ROC-AUC" in lines[0]
    by_label = {line.split("  ")[0].strip(): line for line in lines[2:6]}
    assert by_label["1D CNN"].rstrip().endswith("0.61") and "878" in by_label["1D CNN"]
    assert by_label["tuned"].rstrip().endswith("0.86")
    assert by_label["prior only"].rstrip().endswith("-")
    assert by_label["CRNN"].rstrip().endswith("-")                # Won et al.'s figure is not the homework's
    assert "not a result of this run" in lines[-1]
