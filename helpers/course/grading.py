"""The homework workflow: the student version of the notebooks, and grading.

Exercise cells hold their solution between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` lines. :func:`student_notebook` replaces each such block
by ``# YOUR CODE HERE`` and ``raise NotImplementedError`` (at the block's
indentation) and clears the outputs of the exercise cells and of every cell
after the first exercise. :func:`grade` runs each submitted notebook in the
``ci`` profile in a throwaway workspace with limits
(:mod:`helpers.course.sandbox`), for its status and recorded metrics, grades
each exercise in a clean kernel of its own (:mod:`helpers.course.exercises`:
the submission's check cells and files are never trusted), and writes one CSV
row per submission.
"""
from __future__ import annotations

import copy
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import nbformat

from ..config import REPO, data_root, tqdm
from .exercises import applicable, grade_exercise
from .sandbox import Kernel, Limits, changed, fingerprint, workspace

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUDENT_STUB = ("# YOUR CODE HERE", "raise NotImplementedError")
COURSE_NOTEBOOKS = REPO / "notebooks"


class MarkerError(ValueError):
    """A notebook whose solution markers are unbalanced or nested."""


def strip_solution(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace every solution block of a cell's source by the student stub.

    Returns ``(new source, number of blocks)``; raises :class:`MarkerError`
    naming ``where`` for an END without BEGIN, a nested BEGIN, or a missing END.
    """
    out, inside, blocks = [], False, 0
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise MarkerError(f"{where}: '{BEGIN}' inside another solution block")
            inside, blocks = True, blocks + 1
            indent = line[:len(line) - len(line.lstrip())]
            out.extend(indent + s for s in STUDENT_STUB)
        elif stripped.startswith(END):
            if not inside:
                raise MarkerError(f"{where}: '{END}' without a '{BEGIN}' before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: '{BEGIN}' without a matching '{END}'")
    return "\n".join(out), blocks


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a solution notebook (a new object)."""
    nb = copy.deepcopy(nb)
    first_exercise = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            if BEGIN in cell.source or END in cell.source:
                raise MarkerError(f"{name}, cell {i} (id {cell.get('id', '?')}): solution markers in a "
                                  f"{cell.cell_type} cell")
            continue
        source, blocks = strip_solution(cell.source, f"{name}, cell {i} (id {cell.get('id', '?')})")
        if blocks and first_exercise is None:
            first_exercise = i
        if blocks or (first_exercise is not None and i >= first_exercise):
            cell.source = source
            cell.outputs = []
            cell.execution_count = None
    return nb


def write_student_version(notebooks: Path, out_dir: Path) -> list[Path]:
    """Write the student version of every ``NN_*.ipynb`` of ``notebooks`` into
    ``out_dir`` (same names). Deterministic: twice gives identical files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        nb = student_notebook(nbformat.read(path, as_version=4), path.name)
        target = out_dir / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


GRADE_FIELDS = ("submission", "status", "seconds")
METRICS = ("roc_auc", "pr_auc", "R@1", "R@8")


class GradingError(RuntimeError):
    """A submission changed the course's files: the grades after it cannot be trusted."""


def run_notebook(nb: nbformat.NotebookNode, course: Path, dataset: Path | None, limits: Limits) -> dict:
    """Run every code cell of ``nb`` in a throwaway workspace (a copy of the
    course's ``helpers`` and of ``dataset``); stop at the first failure.
    Returns ``status`` (``ok``, ``error``, ``timeout``, ``memory``), the
    one-line ``error`` and the metrics the notebook recorded."""
    row: dict = {"status": "ok"}
    with tempfile.TemporaryDirectory(prefix="course-submission-") as tmp:
        paths = workspace(Path(tmp), course, dataset)
        try:
            with Kernel(paths, limits) as kernel:
                for i, cell in enumerate(nb.cells):
                    if cell.cell_type != "code" or not cell.source.strip():
                        continue
                    done = kernel.execute(cell.source)
                    if done.status != "ok":
                        status = done.status if done.status in ("timeout", "memory") else "error"
                        row.update(status=status, error=f"cell {i} (id {cell.get('id', '?')}): {done.error}")
                        break
        except RuntimeError as e:                  # the kernel never started
            row.update(status="error", error=f"the kernel did not start: {e}"[:200])
        row.update(_metrics(Path(tmp) / "results.jsonl"))
    return row


def _metrics(path: Path) -> dict:
    """The metrics of a results file, ``{model_metric: number}``, ignoring
    any line that is not a result."""
    found: dict = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[:1000] if path.is_file() else []
    except OSError:
        return found
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict) or not isinstance(r.get("model"), str):
            continue
        for key in METRICS:
            if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool):
                found[f"{r['model'][:60]}_{key}"] = r[key]
    return found


def grade_one(path: Path, timeout: int = 600, solutions: Path | None = None, limits: Limits | None = None,
              dataset: Path | None = None, course: Path = REPO, whole_notebook: bool = True) -> dict:
    """Grade one submission and return its row: ``status`` of the whole
    notebook's run (``ok``, ``error``, ``timeout``, ``memory``, ``not a
    notebook``) and its ``error`` line, one ``check_<name>`` column per
    exercise (``passed``, ``failed``, ``tampered``, ``error``, each graded in a
    clean kernel of its own, see :mod:`helpers.course.exercises`) with the
    reasons in ``notes``, and the metrics the notebook recorded.
    ``solutions``: the course's solution notebooks (default ``notebooks/``);
    ``dataset``: the dataset folder copied for the run (default: the
    synthetic set); ``whole_notebook=False`` grades the exercises only."""
    limits = limits or Limits(timeout=timeout)
    solutions = solutions or COURSE_NOTEBOOKS
    row: dict = {"submission": str(path), "status": "", "seconds": 0.0}
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a notebook"
        row.update(status="not a notebook", error=str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return row
    start = time.perf_counter()
    if whole_notebook:
        row.update(run_notebook(nb, course, dataset if dataset is not None else data_root("synthetic"), limits))
    else:
        row["status"] = "not run"
    notes = []
    for ex in applicable(nb, path.name):
        try:
            verdict, reason = grade_exercise(ex, nb, solutions, course, limits)
        except RuntimeError as e:                  # the kernel never started
            verdict, reason = "error", f"the kernel did not start: {e}"[:200]
        row[f"check_{ex.name}"] = verdict
        if verdict != "passed":
            notes.append(f"{ex.name}: {reason}")
    row["notes"] = " | ".join(notes)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def grade(paths: Sequence[Path], out_csv: Path, timeout: int = 600, solutions: Path | None = None,
          limits: Limits | None = None, dataset: Path | None = None, whole_notebook: bool = True) -> list[dict]:
    """Grade every submission (a notebook, or every file in a folder) into
    ``out_csv``; never stops on a broken one. Before and after each, the
    course's files (``helpers``, the solution notebooks, the dataset) are
    fingerprinted: a submission that changed them is marked ``tampered`` and
    grading stops with :class:`GradingError` (the CSV holds the rows so far)."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p])
    solutions = solutions or COURSE_NOTEBOOKS
    dataset = dataset if dataset is not None else data_root("synthetic")
    watched = [REPO / "helpers", solutions] + ([dataset] if dataset.is_dir() else [])
    rows, stopped = [], None
    for f in tqdm(files, desc="grading", unit="notebook"):
        before = fingerprint(watched)
        rows.append(grade_one(f, timeout, solutions, limits, dataset, whole_notebook=whole_notebook))
        touched = changed(before, fingerprint(watched))
        if touched:
            rows[-1].update(status="tampered", error=f"changed the course's files: {', '.join(touched[:3])}")
            stopped = GradingError(f"{f} changed the course's files ({', '.join(touched[:3])}): restore them "
                                   f"(git checkout, or prepare the dataset again) and grade the rest again")
            break
    fields = list(GRADE_FIELDS)
    for r in rows:
        fields += [k for k in r if k not in fields]
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    if stopped:
        raise stopped
    return rows
