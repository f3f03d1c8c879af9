"""Student version, self-checks and grading."""
from __future__ import annotations

import csv
import io
from contextlib import redirect_stdout
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from torch import nn

from helpers.course.checks import check_cnn2d, check_recall_at_k
from helpers.course.grading import BEGIN, END, MarkerError, grade, student_notebook, write_student_version
from helpers.models import build_model

REPO = Path(__file__).resolve().parent.parent

SETUP = f"import sys\nsys.path.insert(0, {str(REPO)!r})"
RECALL_OK = f"""def my_recall_at_k(sim, labels, k):
    {BEGIN}
    import numpy as np
    scores = []
    for q in range(len(sim)):
        if labels[q].sum():
            order = [j for j in np.argsort(-sim[q], kind="stable") if j != q][:k]
            scores.append((labels[order].any(0) & (labels[q] > 0)).sum() / labels[q].sum())
    return float(np.mean(scores))
    {END}"""        # numpy only: a kernel that imports no course module starts in half a second
RECALL_SELF = """def my_recall_at_k(sim, labels, k):
    import numpy as np
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]       # forgets to skip the query itself
    scores = [(labels[order[q]].any(0) & labels[q].astype(bool)).sum() / labels[q].sum()
              for q in range(len(sim)) if labels[q].sum()]
    return float(np.mean(scores))"""
CHECK = "from helpers.course.checks import check_recall_at_k\ncheck_recall_at_k(my_recall_at_k)"
RECORD = "from helpers.course import record_result\nrecord_result('toy', '99', roc_auc=0.75)"


def make_notebook(cells: list[str], outputs: bool = True) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.nbformat_minor = 5
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# A toy homework")]
    for src in cells:
        cell = nbformat.v4.new_code_cell(src)
        if outputs:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="old output\n")]
        nb.cells.append(cell)
    return nb


def test_student_version_strips_solutions_and_clears_later_outputs(tmp_path):
    nb = make_notebook([SETUP, "x = 1", RECALL_OK, CHECK])
    student = student_notebook(nb, "toy.ipynb")
    code = [c for c in student.cells if c.cell_type == "code"]
    assert code[0].outputs and code[1].outputs                  # before the first exercise: kept
    assert "return recall_at_k(sim, labels, k)" not in code[2].source and BEGIN not in code[2].source
    assert "    # YOUR CODE HERE\n    raise NotImplementedError" in code[2].source
    assert code[2].outputs == [] and code[3].outputs == [] and code[3].source == CHECK
    assert [c.id for c in student.cells] == [c.id for c in nb.cells]
    assert nb.cells[3].source == RECALL_OK                      # the original is untouched


def test_student_version_is_deterministic_and_reports_bad_markers(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    nbformat.write(make_notebook([SETUP, RECALL_OK, CHECK]), src / "01_toy.ipynb")
    first = [p.read_bytes() for p in write_student_version(src, tmp_path / "a")]
    second = [p.read_bytes() for p in write_student_version(src, tmp_path / "a")]
    assert first == second and len(first) == 1
    bad = make_notebook([SETUP, f"x = 1\n{BEGIN}\ny = 2"])
    with pytest.raises(MarkerError, match=r"02_bad.ipynb, cell 2 .*without a matching"):
        student_notebook(bad, "02_bad.ipynb")
    with pytest.raises(MarkerError, match="without a"):
        student_notebook(make_notebook([f"{END}"]), "x.ipynb")


def test_student_notebook_runs_until_the_first_exercise(tmp_path):
    nb = student_notebook(make_notebook([SETUP, "ready = 'yes'\nprint(ready)", RECALL_OK + "\nmy_recall_at_k(0, 0, 1)",
                                         CHECK]), "toy")
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        client.execute()
    assert nb.cells[2].outputs[0]["text"] == "yes\n"


def verdict(fn, *args) -> tuple[bool, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        ok = fn(*args)
    return ok, buf.getvalue()


def test_cnn2d_check_passes_on_figure1_and_explains_a_wrong_padding():
    ok, text = verdict(check_cnn2d, build_model("cnn2d"))
    assert ok and text.startswith("PASSED")

    def figure1_like(pad2: int, last_kernel: int, pad1: int = 1) -> nn.Module:
        class Student(nn.Module):
            def __init__(self):
                super().__init__()
                ref = build_model("cnn2d")
                self.spec, self.spec_bn = ref.spec, ref.spec_bn
                self.layers = nn.Sequential(
                    nn.Conv2d(1, 64, 3, padding=pad1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(4),
                    nn.Conv2d(64, 128, 3, padding=pad2), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(3),
                    nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(3),
                    nn.Conv2d(128, 64, last_kernel, padding=last_kernel // 2), nn.BatchNorm2d(64), nn.ReLU(),
                    nn.MaxPool2d((2, 5)))
                self.linear = nn.Linear(64, 50)

            def forward(self, x):
                return self.linear(self.layers(self.spec_bn(self.spec(x))).flatten(1))
        return Student()

    ok, text = verdict(check_cnn2d, figure1_like(pad2=1, last_kernel=3))
    assert ok, text                                       # a student's own correct version passes
    ok, text = verdict(check_cnn2d, figure1_like(pad2=0, last_kernel=3))   # forgot the padding
    assert not ok and "block 2 outputs 128x7x15 instead of 128x8x15" in text and "padding" in text
    # the seed report's version: padding 2 first, a 1x1 last conv: right shapes, wrong model
    ok, text = verdict(check_cnn2d, figure1_like(pad2=1, last_kernel=1, pad1=2))
    assert not ok and "234,356 parameters instead of 299,892" in text


def test_recall_check_passes_on_the_definition_and_catches_counting_the_query():
    namespace: dict = {}
    exec(RECALL_OK.replace(BEGIN, "").replace(END, ""), namespace)
    ok, text = verdict(check_recall_at_k, namespace["my_recall_at_k"])
    assert ok and text.startswith("PASSED")
    exec(RECALL_SELF, namespace)
    ok, text = verdict(check_recall_at_k, namespace["my_recall_at_k"])
    assert not ok and "the definition gives 0.6250" in text and "its own neighbour" in text
    ok, text = verdict(check_recall_at_k, lambda s, l, k: 1 / 0)
    assert not ok and "ZeroDivisionError" in text


COURSE = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", COURSE, ids=[p.name for p in COURSE])
def test_course_notebooks_have_balanced_markers_and_leak_no_solution(path):
    nb = nbformat.read(path, as_version=4)
    student = student_notebook(nb, path.name)
    solution_lines = set()
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if line.strip().startswith(BEGIN):
                inside = True
            elif line.strip().startswith(END):
                inside = False
            elif inside and line.strip():
                solution_lines.add(line)
    text = "\n".join(c.source for c in student.cells)
    assert BEGIN not in text and END not in text
    leaked = [ln for ln in solution_lines if ln in text.splitlines()]
    assert not leaked, f"solution lines still in the student version: {leaked[:3]}"


@pytest.mark.skipif(not (REPO / "notebooks" / "02_cnn2d.ipynb").exists(), reason="notebook 02 not written yet")
def test_student_version_of_notebook_02_stops_at_its_exercise(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    nb = student_notebook(nbformat.read(REPO / "notebooks" / "02_cnn2d.ipynb", as_version=4), "02_cnn2d.ipynb")
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        client.execute()


# --------------------------------------------------------------------------- hostile submissions
# One grading call per kind of harm, over a folder: one submission per trick, a good one last (it must
# pass: nothing of the tricks outlives its kernel). The exercise-only call has a tiny timeout, which
# the infinite loop runs into; the whole-notebook call holds what needs a whole run.

WRONG = """def my_recall_at_k(sim, labels, k):
    return 1.0"""
HOSTILE_EXERCISE = {            # a wrong answer, and a trick to be graded as passing anyway
    "checks-file": ([SETUP, WRONG + "\nimport os\nopen(os.environ.get('COURSE_CHECKS_FILE', 'checks.jsonl'), 'a')"
                     ".write('{\"check\": \"recall_at_k\", \"passed\": true}\\n')", CHECK], "failed"),
    "prints-passed": ([SETUP, WRONG, "print('PASSED: your Recall@K agrees with the definition')"], "tampered"),
    "patches-the-check": ([SETUP, WRONG + "\nimport sys, types\nsys.modules['helpers.course.checks'] = types.Simple"
                           "Namespace(check_recall_at_k=lambda f: True, judge_recall_at_k=lambda *a: (True, 'ok'))",
                           CHECK], "failed"),
    "edits-the-check-cell": ([SETUP, WRONG, "passed = True  # check_recall_at_k(my_recall_at_k)"], "failed"),
    "patches-numpy-and-json": ([SETUP, WRONG + "\nimport numpy, json, builtins\nnumpy.isclose = lambda *a, **k: True"
                                "\njson.dumps = lambda *a, **k: '{\"passed\": true}'\nbuiltins.print = lambda *a: None",
                                CHECK], "tampered"),
    "patches-the-probe": ([SETUP, WRONG + "\nimport builtins\n_exec = builtins.exec\nbuiltins.exec = lambda *a: None",
                           CHECK], "error"),
    "exits-the-kernel": ([SETUP, WRONG + "\nimport os\nos._exit(0)", CHECK], "error"),
    "raises-system-exit": ([SETUP, "raise SystemExit(0)\n" + WRONG, CHECK], "error"),
    "never-returns": ([SETUP, WRONG + "\nwhile True:\n    pass", CHECK], "error"),
}
GOOD = [SETUP, RECALL_OK, CHECK]


def test_hostile_exercise_cells_are_never_graded_passed(tmp_path):
    from helpers.course.sandbox import Limits

    subs = tmp_path / "subs"
    subs.mkdir()
    for i, (trick, (cells, _)) in enumerate(HOSTILE_EXERCISE.items()):
        nbformat.write(make_notebook(cells, outputs=False), subs / f"{i}-{trick}.ipynb")
    nbformat.write(make_notebook(GOOD, outputs=False), subs / "z-good.ipynb")
    rows = {Path(r["submission"]).stem.split("-", 1)[1]: r
            for r in grade([subs], tmp_path / "grades.csv", limits=Limits(timeout=3), whole_notebook=False)}
    got = {trick: rows[trick]["check_recall_at_k"] for trick in HOSTILE_EXERCISE}
    assert got == {trick: verdict for trick, (_, verdict) in HOSTILE_EXERCISE.items()}, rows
    assert "gives 1.0000" in rows["checks-file"]["notes"]
    assert "ran longer than 3 s" in rows["never-returns"]["notes"]
    assert rows["good"]["check_recall_at_k"] == "passed", rows["good"]


HOSTILE_NOTEBOOK = {            # harm to the course, to the grader or to the next submission
    "overwrites-the-course": ("import pathlib\nfor p in pathlib.Path('..').rglob('*.py'):\n    p.write_text('raise "
                              "SystemExit')\npathlib.Path('../../data').mkdir(exist_ok=True)\nimport shutil, os\n"
                              "shutil.rmtree(os.environ['COURSE_DATA'])\nopen(os.path.expanduser('~/.bashrc'), 'w')",
                              "ok"),
    "memory-bomb": ("x = []\nwhile True:\n    x.append(bytearray(2**28))", "memory"),
    "huge-output": ("while True:\n    print('x' * 100000, flush=True)", "error"),   # unflushed: cut as well, in 8 s
    "forks": ("import os, time\nfor _ in range(20):\n    if os.fork() == 0:\n        time.sleep(600)\n"
              "        os._exit(0)\nraise RuntimeError('forked')", "error"),
    "reads-the-grader-env": ("import os\nassert not [k for k in os.environ if 'SECRET' in k or k == "
                             "'COURSE_CHECKS_FILE'], sorted(os.environ)", "ok"),
    "crashes": ("raise RuntimeError('my code crashed')", "error"),
}
LIGHT_CHECK = "def check_recall_at_k(fn):\n    pass\n\n\ncheck_recall_at_k(my_recall_at_k)"   # not trusted anyway


def test_grading_a_folder_of_hostile_notebooks_harms_nothing_and_never_stops(tmp_path, monkeypatch):
    from helpers.course.sandbox import Limits, fingerprint

    monkeypatch.setenv("GRADER_SECRET_TOKEN", "s3cret")
    data = tmp_path / "data" / "synthetic"
    data.mkdir(parents=True)
    (data / "meta.json").write_text("{}")
    subs = tmp_path / "subs"
    subs.mkdir()
    for i, (trick, (cell, _)) in enumerate(HOSTILE_NOTEBOOK.items()):
        cells = [SETUP, cell, CHECK] if trick == "crashes" else [SETUP, cell]
        if trick == "overwrites-the-course":            # its exercise is graded in a fresh copy of the course
            cells = [SETUP, RECALL_SELF, LIGHT_CHECK, cell]
        nbformat.write(make_notebook(cells, outputs=False), subs / f"{i}-{trick}.ipynb")
    (subs / "8-no-notebook.txt").write_text("I forgot to attach the notebook")
    nbformat.write(make_notebook(GOOD + [RECORD], outputs=False), subs / "9-good.ipynb")
    watched = [REPO / "helpers", REPO / "notebooks", data]
    before = fingerprint(watched)
    limits = Limits(timeout=60, memory=2 * 2**30, output=2**20)
    out = tmp_path / "grades.csv"
    grade([subs], out, limits=limits, dataset=data)
    assert fingerprint(watched) == before
    with open(out, newline="") as f:
        rows = {Path(r["submission"]).stem.split("-", 1)[1]: r for r in csv.DictReader(f)}
    assert {trick: rows[trick]["status"] for trick in HOSTILE_NOTEBOOK} == \
        {trick: status for trick, (_, status) in HOSTILE_NOTEBOOK.items()}, rows
    assert rows["overwrites-the-course"]["check_recall_at_k"] == "failed"
    assert "printed more than 1 MB" in rows["huge-output"]["error"]
    assert rows["crashes"]["error"].startswith("cell 2 ") and "my code crashed" in rows["crashes"]["error"]
    assert rows["crashes"]["check_recall_at_k"] == "error"
    assert rows["no-notebook"]["status"] == "not a notebook"
    good = rows["good"]
    assert good["status"] == "ok" and good["check_recall_at_k"] == "passed" and float(good["toy_roc_auc"]) == 0.75


def test_the_solution_notebooks_pass_and_their_student_versions_raise(tmp_path):
    """One grading call over a folder holding both: every exercise of a
    solution notebook passes; every one of its student version raises
    NotImplementedError."""
    names = ["01_cnn1d_baseline.ipynb", "02_cnn2d.ipynb", "03_tuning.ipynb", "04_metric_learning.ipynb",
             "05_sota_backbones.ipynb"]
    subs = tmp_path / "subs"
    (subs / "solved").mkdir(parents=True)
    for name in names:
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        nbformat.write(nb, subs / "solved" / name)
        nbformat.write(student_notebook(nb, name), subs / f"student-{name}")
    rows = grade([subs / "solved", subs], tmp_path / "grades.csv", timeout=120, whole_notebook=False)
    verdicts = {r["submission"]: {k: v for k, v in r.items() if k.startswith("check_") and v} for r in rows}
    solved = {Path(k).name: v for k, v in verdicts.items() if "/solved/" in k}
    student = {Path(k).name: v for k, v in verdicts.items() if "student-" in k}
    assert sorted(solved) == names and all(set(v.values()) == {"passed"} for v in solved.values()), solved
    assert sum(len(v) for v in solved.values()) == 7                   # 02, 04: two exercises each
    assert len(student) == len(names) and all(set(v.values()) == {"error"} for v in student.values()), student
    assert all(r["notes"].count("NotImplementedError") == len(verdicts[r["submission"]])
               for r in rows if "student-" in r["submission"]), rows
