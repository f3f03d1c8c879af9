"""Running the course: execute every notebook in order and summarise the run.

Notebooks read their parameters from the environment (``COURSE_PROFILE``,
``COURSE_DATASET``, see :mod:`helpers.config`), so the same committed
notebook runs in the ``ci``, ``cpu`` or ``gpu`` profile unchanged.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .results import course_table, format_table, read_results

__all__ = ["LocalKernelManager", "run_notebooks"]


class LocalKernelManager(KernelManager):
    """A ``jupyter_client`` kernel manager (for ``NotebookClient``'s
    ``kernel_manager_class``) whose kernels talk over local IPC sockets in a
    private temporary folder: over TCP, recent ipykernels print on every
    start a warning that the connection is unencrypted."""

    def __init__(self, **kwargs: Any) -> None:
        self._folder = tempfile.mkdtemp(prefix="course-kernel-")
        super().__init__(transport="ipc", ip=os.path.join(self._folder, "kernel"), **kwargs)

    def cleanup_resources(self, restart: bool = False) -> None:
        super().cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(self._folder, ignore_errors=True)


def run_notebooks(notebooks: Path, out: Path, profile: str = "cpu", dataset: str = "synthetic",
                  timeout: int = 1800, inplace: bool = False, only: list[str] | None = None) -> int:
    """Execute every ``NN_*.ipynb`` of ``notebooks`` in order into ``out``,
    with the given profile and dataset; print each notebook's time and write
    ``out/summary.md``, which ends with the course's final table (notebook
    05's :func:`course_table`) of this run's results. The training runs keep
    their checkpoints in ``out/runs`` (cleared first, as the results, unless
    ``only`` is given). ``inplace`` also writes the
    executed notebooks back over the originals (how the committed outputs are
    made); ``only`` restricts the run to notebooks whose name starts with one
    of the given prefixes. Returns 0, or 1 if a notebook failed (the others
    still run)."""
    paths = sorted(p for p in notebooks.glob("[0-9][0-9]_*.ipynb")
                   if not only or any(p.name.startswith(o) for o in only))
    if not paths:
        print(f"no notebooks found in {notebooks}")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(COURSE_PROFILE=profile, COURSE_DATASET=dataset,
                      COURSE_RESULTS=str((out / "results.jsonl").resolve()),
                      COURSE_RUNS=str((out / "runs").resolve()))
    os.environ.setdefault("COURSE_PROGRESS", "0")          # no progress bars in recorded outputs
    if not only:                                           # a recorded run trains everything anew
        (out / "results.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "runs", ignore_errors=True)
    timings, failed = [], []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        print(f"running {path.name} ({profile} profile, {dataset}) ...", flush=True)
        try:
            NotebookClient(nb, kernel_manager_class=LocalKernelManager, timeout=timeout, kernel_name="python3",
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
    times = [[n, f"{t:.0f}", s] for n, t, s in timings] + [["total", f"{total:.0f}", ""]]
    lines = [f"# Course run: {profile} profile on the {dataset} dataset", "",
             format_table(("notebook", "time (s)", "status"), times, markdown=True), ""]
    rows = read_results(out / "results.jsonl", profile, dataset)
    lines += [f"## Every model of the course ({profile} profile, {dataset} dataset): the table of notebook 05", "",
              course_table(rows), ""]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 1 if failed else 0
