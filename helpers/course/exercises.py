"""Grading one exercise of a submission, in a clean kernel the submission
cannot reach.

Each :class:`Exercise` names the course notebook that holds it, the id of its
exercise cell, the name the cell defines and the course cells to run before
it. :func:`grade_exercise` starts a fresh kernel in a throwaway folder, runs
the course's set-up (read from the course's notebook, never from the
submission), then the submission's exercise cell alone, then the course's
probe (:mod:`helpers.course.probes`, sent as source) on inputs drawn from a
fresh random seed, and reads the probe's JSON through ``user_expressions``
under a fresh random key, on the kernel's reply channel. The judge runs in
the grader's process, against the course's answers computed there. A
verdict is ``passed``, ``failed``, ``tampered`` (no check call, or a probe
answer that is not one) or ``error`` (the cell raised, timed out, or the
exercise is not written yet: ``NotImplementedError``).
"""
from __future__ import annotations

import ast
import json
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from . import checks, probes
from .sandbox import Kernel, Limits, workspace

NUMPY = "import numpy as np"
TORCH = "import numpy as np\nimport torch\nfrom torch import nn"
MAX_ANSWER = 64 * 2**20          # characters of probe answer read back
PROBES_SOURCE = Path(probes.__file__).read_text(encoding="utf-8")   # read once, before any submission runs


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``name`` (its check is ``check_<name>``), the course
    ``notebook`` and ``cell`` id that hold it, the name the cell ``defines``,
    the kernel ``answer`` expression (``{}`` stands for that name), the
    ``imports`` and the course ``setup`` cells run before it."""

    name: str
    notebook: str
    cell: str
    defines: str
    answer: str = "{}"
    imports: str = NUMPY
    setup: tuple[str, ...] = ()


EXERCISES = (
    Exercise("top_k_tags", "01_cnn1d_baseline.ipynb", "nb01-27", "top_k_tags"),
    Exercise("figure1_table", "02_cnn2d.ipynb", "nb02-ex-table", "FIGURE1_TABLE"),
    Exercise("cnn2d", "02_cnn2d.ipynb", "nb02-07", "Figure1CNN", "lambda: {}(n_tags=50)", TORCH),
    Exercise("residual_block", "03_tuning.ipynb", "nb03-07", "ResidualBlock", imports=TORCH),
    Exercise("recall_at_k", "04_metric_learning.ipynb", "nb04-13", "my_recall_at_k", setup=("nb04-11",)),
    Exercise("mined_triplet_loss", "04_metric_learning.ipynb", "nb04-ex-mining", "mined_triplet_loss", imports=TORCH),
    Exercise("musicnn_front_end", "05_sota_backbones.ipynb", "nb05-ex-frontend", "MyMusicnnFrontEnd",
             imports=TORCH),
)


def _defines(source: str, name: str) -> bool:
    return re.search(rf"^(def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*=", source, re.M) is not None


def _check_call(name: str) -> re.Pattern:
    return re.compile(rf"\bcheck_{re.escape(name)}\s*\(\s*([A-Za-z_]\w*)?")


def applicable(nb: nbformat.NotebookNode, filename: str) -> list[Exercise]:
    """The exercises a submission holds: its file has the course notebook's
    name, or it has the exercise cell's id, calls the check, or defines the name."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    ids = {c.get("id") for c in code}
    return [ex for ex in EXERCISES
            if filename.endswith(ex.notebook) or ex.cell in ids or any(_check_call(ex.name).search(c.source)
                                                                        or _defines(c.source, ex.defines)
                                                                        for c in code)]


def find_exercise(nb: nbformat.NotebookNode, ex: Exercise) -> tuple[str, str] | None:
    """``(source, name)`` of the submission's exercise cell: the cell with
    the exercise's id that defines its name, else the first cell that defines
    it, else the cell defining what the check is called on."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        if cell.get("id") == ex.cell and _defines(cell.source, ex.defines):
            return cell.source, ex.defines
    for cell in code:
        if _defines(cell.source, ex.defines):
            return cell.source, ex.defines
    called = [m.group(1) for c in code for m in _check_call(ex.name).finditer(c.source) if m.group(1)]
    for name in called:
        for cell in code:
            if re.search(rf"^(def|class)\s+{re.escape(name)}\b", cell.source, re.M):
                return cell.source, name
    return None


def course_setup(ex: Exercise, solutions: Path, course: Path) -> str:
    """The code run before the exercise cell: the course on ``sys.path``, the
    imports, and the course's own set-up cells (from its solution notebook)."""
    lines = ["import sys", f"sys.path.insert(0, {str(course)!r})", ex.imports]
    if ex.setup:
        nb = nbformat.read(solutions / ex.notebook, as_version=4)
        cells = {c.get("id"): c.source for c in nb.cells}
        lines += [cells[i] for i in ex.setup]
    return "\n".join(lines)


def _answer(reply: dict | None, key: str, nonce: str) -> list:
    """The probe's outputs from an ``execute_reply``; ``ValueError`` when
    they are missing, not JSON, too long or carry another nonce."""
    found = ((reply or {}).get("user_expressions") or {}).get(key)
    if not isinstance(found, dict):
        raise ValueError("the kernel returned no answer to the probe")
    if found.get("status") != "ok":
        raise LookupError(f"{found.get('ename', 'Error')}: {str(found.get('evalue', ''))[:150]}")
    text = (found.get("data") or {}).get("text/plain")
    if not isinstance(text, str) or len(text) > MAX_ANSWER:
        raise ValueError("the probe's answer is missing or too long")
    payload = json.loads(ast.literal_eval(text))
    if not isinstance(payload, dict) or payload.get("nonce") != nonce or not isinstance(payload.get("outputs"), list):
        raise ValueError("the probe's answer does not carry this grading's nonce")
    return probes.decode(payload["outputs"])


def grade_exercise(ex: Exercise, nb: nbformat.NotebookNode, solutions: Path, course: Path,
                   limits: Limits) -> tuple[str, str]:
    """``(verdict, reason)`` for exercise ``ex`` of the submission ``nb``."""
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    if not any(_check_call(ex.name).search(src) for src in code):
        return "tampered", f"no cell calls check_{ex.name}: the self-check cell was removed or rewritten"
    found = find_exercise(nb, ex)
    if found is None:
        return "error", f"no cell defines {ex.defines} (the exercise cell {ex.cell})"
    source, name = found
    seed = secrets.randbelow(2**31 - 1) + 1
    key, nonce = f"course_{secrets.token_hex(16)}", secrets.token_hex(16)
    cases = checks.CASES[ex.name](seed)
    with tempfile.TemporaryDirectory(prefix="course-exercise-") as tmp:
        paths = workspace(Path(tmp), course)
        with Kernel(paths, limits) as kernel:
            done = kernel.execute(course_setup(ex, solutions, paths["course"]))
            if done.status != "ok":
                return "error", f"the course's set-up failed: {done.error}"
            done = kernel.execute(source)
            if done.status != "ok":
                return ("tampered" if done.status == "broken" else "error"), f"the exercise cell: {done.error}"
            space = f"_{key}"
            done = kernel.execute(f"{space} = {{}}\nexec(compile({PROBES_SOURCE!r}, 'course probes', 'exec'), "
                                  f"{space})")
            if done.status != "ok":
                return "tampered", f"the course's probe could not be loaded after the exercise cell: {done.error}"
            expression = (f"{space}['run']({ex.name!r}, {ex.answer.format(name)}, "
                          f"{json.dumps(probes.encode(cases))!r}, {nonce!r})")
            done = kernel.execute("", user_expressions={key: expression})
            if done.status != "ok":
                return ("tampered" if done.status == "broken" else "error"), f"probing the answer: {done.error}"
            try:
                outputs = _answer(done.reply, key, nonce)
            except LookupError as e:
                return ("error" if str(e).startswith("NotImplementedError") else "failed"), str(e)
            except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
                return "tampered", str(e)[:200]
    raised = [o.get("raised", "") for o in outputs if isinstance(o, dict) and isinstance(o.get("raised"), str)]
    if any(r.startswith("NotImplementedError") for r in raised):
        return "error", raised[0]
    try:
        passed, message = checks.JUDGES[ex.name](cases, outputs)
    except Exception as e:  # noqa: BLE001 - outputs that are not what a probe returns
        return "tampered", f"the probe's answer is malformed ({type(e).__name__})"
    return ("passed" if passed else "failed"), message.splitlines()[0][:300]

