"""The homework workflow: the student version of the notebooks, and grading.

Exercise cells hold their solution between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` lines. :func:`student_notebook` replaces each such block
by ``# YOUR CODE HERE`` and ``raise NotImplementedError`` (at the block's
indentation) and clears the outputs of the exercise cells and of every cell
after the first exercise. :func:`grade` executes submitted notebooks in the
``ci`` profile in a fresh kernel, collects the verdicts of the
:mod:`helpers.course.checks` self-check cells and the metrics the notebook recorded,
and writes one CSV row per submission.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Sequence

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from ..config import REPO, tqdm
from .run import LocalKernelManager

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUDENT_STUB = ("# YOUR CODE HERE", "raise NotImplementedError")
COURSE_NOTEBOOKS = REPO / "notebooks"
CHECK_CALL = re.compile(r"\bcheck_(\w+)\s*\(")


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


def expected_checks(nb: nbformat.NotebookNode) -> list[str]:
    """Names of the checks a notebook calls (``check_cnn2d(...)`` -> ``cnn2d``)."""
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for m in CHECK_CALL.finditer(cell.source):
                if m.group(1) not in names:
                    names.append(m.group(1))
    return names


GRADE_FIELDS = ("submission", "status", "seconds")


def grade_one(path: Path, timeout: int = 600, solutions: Path | None = None, run_dir: Path | None = None) -> dict:
    """Execute one submission and return its row: ``status`` (``ok``,
    ``error``, ``timeout`` or ``not a notebook``), one column per check
    (``passed`` / ``failed`` / ``error`` when it never ran), the metrics the
    notebook recorded and, for an error, the first line of its message.
    The notebook runs in ``run_dir`` (default: the course's notebooks folder,
    so that its setup cell finds ``helpers`` wherever the file was saved)."""
    row: dict = {"submission": str(path), "status": "", "seconds": 0.0}
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a notebook"
        row.update(status="not a notebook", error=str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return row
    checks = expected_checks(nb)
    if solutions and (solutions / path.name).exists():
        checks = expected_checks(nbformat.read(solutions / path.name, as_version=4)) or checks
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checks_file, results_file = Path(tmp) / "checks.jsonl", Path(tmp) / "results.jsonl"
        saved = {k: os.environ.get(k) for k in ("COURSE_PROFILE", "COURSE_CHECKS_FILE", "COURSE_RESULTS")}
        os.environ.update(COURSE_PROFILE="ci", COURSE_CHECKS_FILE=str(checks_file),
                          COURSE_RESULTS=str(results_file))
        try:
            NotebookClient(nb, kernel_manager_class=LocalKernelManager, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(run_dir or COURSE_NOTEBOOKS)}}).execute()
            row["status"] = "ok"
        except CellTimeoutError:
            row.update(status="timeout", error=f"a cell ran longer than {timeout} s")
        except CellExecutionError as e:
            row.update(status="error", error=_first_error_line(e))
        except Exception as e:  # noqa: BLE001 - a kernel that dies, a bad kernel spec...
            row.update(status="error", error=f"{type(e).__name__}: {e}"[:200])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        verdicts = [json.loads(line) for line in checks_file.read_text().splitlines()] if checks_file.exists() else []
        results = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    row["seconds"] = round(time.perf_counter() - start, 1)
    for name in checks:
        row[f"check_{name}"] = "error"
    for v in verdicts:
        row[f"check_{v['check']}"] = "passed" if v["passed"] else "failed"
    for r in results:
        for key in ("roc_auc", "pr_auc", "R@1", "R@8"):
            if key in r:
                row[f"{r['model']}_{key}"] = r[key]
    return row


def _first_error_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^\w*(Error|Exception|Interrupt)\b", ln.strip()):
            return ln.strip()[:200]
    return (lines[-1] if lines else type(e).__name__)[:200]


def grade(paths: Sequence[Path], out_csv: Path, timeout: int = 600, solutions: Path | None = None,
          run_dir: Path | None = None) -> list[dict]:
    """Grade every submission (a notebook, or every ``*.ipynb`` in a folder and
    any other file given) into ``out_csv``; never stops on a broken one."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p])
    rows = [grade_one(f, timeout, solutions, run_dir) for f in tqdm(files, desc="grading", unit="notebook")]
    fields = list(GRADE_FIELDS)
    for r in rows:
        fields += [k for k in r if k not in fields]
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    return rows
