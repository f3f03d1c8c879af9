"""Running the course: execute every notebook in order and summarise results.

Notebooks read their parameters from the environment (``COURSE_PROFILE``,
``COURSE_DATASET``, see :func:`helpers.train.choose_profile`), so the same
committed notebook runs in the ``ci``, ``cpu`` or ``gpu`` profile unchanged.
Results that notebooks report are appended to a JSON-lines file, one record
per trained model (:func:`record_result`), which the summary and notebook 05
read back (:func:`read_results`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def results_path() -> Path:
    """The results file of the current run: ``$COURSE_RESULTS`` or
    ``output/results.jsonl`` in the repository."""
    return Path(os.environ.get("COURSE_RESULTS") or REPO / "output" / "results.jsonl")


def checkpoint_path(name: str, dataset: str = "synthetic") -> Path:
    """Where the course keeps the checkpoint ``name`` trained on ``dataset``:
    ``checkpoints/<dataset>/<name>.pt`` in the repository, or under
    ``$COURSE_CHECKPOINTS`` when set. ``best`` is the course's best tagger,
    used by notebook 06 and ``python -m helpers tag``."""
    base = Path(os.environ.get("COURSE_CHECKPOINTS") or REPO / "checkpoints")
    return base / dataset / f"{name}.pt"


def record_result(model: str, notebook: str, **metrics: Any) -> dict:
    """Append one result (a model's scores, parameters, throughput...) to the
    results file; a later record for the same model and notebook replaces an
    earlier one when read back."""
    record = {"model": model, "notebook": notebook, **metrics}
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def read_results(path: str | os.PathLike | None = None) -> list[dict]:
    """Every recorded result, the latest record per (model, notebook), in
    the order the models were first recorded."""
    path = Path(path) if path else results_path()
    if not path.exists():
        return []
    latest: dict[tuple, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["model"], r["notebook"])] = r
    return list(latest.values())


def format_results(rows: list[dict], columns: tuple = ("model", "notebook", "params", "roc_auc", "pr_auc")) -> str:
    """A plain-text table of result records (missing values shown as '-')."""
    if not rows:
        return "(no results recorded yet)"

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
    table = [list(columns)] + [[cell(r.get(c, "-")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def run_notebooks(notebooks: Path, out: Path, profile: str = "cpu", dataset: str = "synthetic",
                  timeout: int = 1800, inplace: bool = False, only: list[str] | None = None) -> int:
    """Execute every ``NN_*.ipynb`` of ``notebooks`` in order into ``out``,
    with the given profile and dataset; print each notebook's time and the
    results table, and write ``out/summary.md``. ``inplace`` also writes the
    executed notebooks back over the originals (how the committed outputs are
    made); ``only`` restricts the run to notebooks whose name starts with one
    of the given prefixes. Returns 0, or 1 if a notebook failed (the others
    still run)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    paths = sorted(p for p in notebooks.glob("[0-9][0-9]_*.ipynb")
                   if not only or any(p.name.startswith(o) for o in only))
    if not paths:
        print(f"no notebooks found in {notebooks}")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(COURSE_PROFILE=profile, COURSE_DATASET=dataset,
                      COURSE_RESULTS=str((out / "results.jsonl").resolve()))
    if not only:
        (out / "results.jsonl").unlink(missing_ok=True)
    timings, failed = [], []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        print(f"running {path.name} ({profile} profile, {dataset}) ...", flush=True)
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            status = "ok"
        except CellExecutionError as e:
            status = "FAILED"
            failed.append(path.name)
            print(str(e).splitlines()[-1] if str(e) else repr(e))
        seconds = time.perf_counter() - start
        timings.append((path.name, seconds, status))
        nbformat.write(nb, out / path.name)
        if inplace and status == "ok":
            nbformat.write(nb, path)
        print(f"  {status} in {seconds:.0f} s", flush=True)
    total = sum(t for _, t, _ in timings)
    lines = [f"# Course run: {profile} profile on the {dataset} dataset", "",
             "| notebook | time (s) | status |", "|---|---|---|"]
    lines += [f"| {n} | {t:.0f} | {s} |" for n, t, s in timings] + [f"| total | {total:.0f} | |", ""]
    lines += ["## Results", "", "```", format_results(read_results(out / "results.jsonl")), "```", ""]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 1 if failed else 0
