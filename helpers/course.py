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


def open_dataset(name: str = "synthetic", root: str | os.PathLike | None = None, progress: bool = True):
    """The prepared dataset ``name`` (a :class:`helpers.datasets.TaggedAudio`)
    at ``root`` (default :func:`helpers.datasets.default_root`). The synthetic
    set is generated first when missing (about 30 s, e.g. in a fresh Colab
    runtime); a missing MTAT raises ``DatasetNotReadyError`` with the command
    that prepares it (``python -m helpers prepare mtat``, see notebook 00)."""
    from .datasets import TaggedAudio, default_root

    if name not in ("synthetic", "mtat"):
        raise ValueError(f"unknown dataset {name!r}: choose 'synthetic' or 'mtat'")
    root = Path(root) if root is not None else default_root(name)
    if name == "synthetic" and not (root / "meta.json").exists():
        from .synth import prepare_synthetic

        prepare_synthetic(root, progress=progress)
    return TaggedAudio(root)


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


def read_results(path: str | os.PathLike | None = None, profile: str | None = None,
                 dataset: str | None = None) -> list[dict]:
    """Every recorded result, the latest record per (model, notebook), in
    the order the models were first recorded; with ``profile`` and/or
    ``dataset``, only the records of that run profile and dataset (results of
    a ``ci`` run are not comparable with those of a ``cpu`` run)."""
    path = Path(path) if path else results_path()
    if not path.exists():
        return []
    latest: dict[tuple, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["model"], r["notebook"])] = r
    return [r for r in latest.values()
            if (profile is None or r.get("profile") == profile) and (dataset is None or r.get("dataset") == dataset)]


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


def local_kernel_manager():
    """A ``jupyter_client`` kernel manager class (for ``NotebookClient``'s
    ``kernel_manager_class``) whose kernels talk over local IPC sockets in a
    private temporary folder: over TCP, recent ipykernels print on every
    start a warning that the connection is unencrypted."""
    import shutil
    import tempfile

    from jupyter_client.manager import KernelManager

    class LocalKernelManager(KernelManager):
        def __init__(self, **kwargs: Any) -> None:
            self._folder = tempfile.mkdtemp(prefix="course-kernel-")
            super().__init__(transport="ipc", ip=os.path.join(self._folder, "kernel"), **kwargs)

        def cleanup_resources(self, restart: bool = False) -> None:
            super().cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(self._folder, ignore_errors=True)

    return LocalKernelManager


def run_notebooks(notebooks: Path, out: Path, profile: str = "cpu", dataset: str = "synthetic",
                  timeout: int = 1800, inplace: bool = False, only: list[str] | None = None) -> int:
    """Execute every ``NN_*.ipynb`` of ``notebooks`` in order into ``out``,
    with the given profile and dataset; print each notebook's time and write
    ``out/summary.md``, which ends with the course's final table (notebook
    05's :func:`course_table`) of this run's results. ``inplace`` also writes the
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
    os.environ.setdefault("COURSE_PROGRESS", "0")          # no progress bars in recorded outputs
    if not only:
        (out / "results.jsonl").unlink(missing_ok=True)
    timings, failed = [], []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        print(f"running {path.name} ({profile} profile, {dataset}) ...", flush=True)
        try:
            NotebookClient(nb, kernel_manager_class=local_kernel_manager(), timeout=timeout, kernel_name="python3",
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
    rows = read_results(out / "results.jsonl", profile, dataset)
    lines += [f"## Every model of the course ({profile} profile, {dataset} dataset): the table of notebook 05", "",
              course_table(rows), ""]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 1 if failed else 0


# ----------------------------------------------------------------------------
# The course's final table (notebook 05 and output/summary.md)
# ----------------------------------------------------------------------------

#: Published MagnaTagATune figures (REFERENCE.md sections 1 and 3), by
#: ``build_model`` name and how the model was trained. They come from other
#: splits, recipes and hardware than any run of this course: references, never
#: results. Source ``W``: Won et al. 2020, clean split (15,244 / 1,529 / 4,332
#: clips). ``H``: KAIST GCT634 HW2 (2021), the homework's subset (6,206 / 1,529
#: / 1,339 clips): the given 1D baseline, one student's Q1 2D CNN, and the
#: report in ``seed/`` (tuned 2D CNN, Recall@K).
PUBLISHED_MTAT: dict[tuple[str, str], dict[str, Any]] = {
    ("cnn1d", "tagger"): {"roc_auc": 0.61, "source": "H"},
    ("cnn2d", "tagger"): {"roc_auc": 0.77, "source": "H"},
    ("cnn2d_tuned", "tagger"): {"roc_auc": 0.86, "source": "H"},
    ("crnn", "tagger"): {"roc_auc": 0.8722, "pr_auc": 0.3625, "source": "W"},
    ("musicnn", "tagger"): {"roc_auc": 0.9106, "pr_auc": 0.4493, "source": "W"},
    ("short_chunk", "tagger"): {"roc_auc": 0.9126, "pr_auc": 0.4590, "source": "W"},
    ("short_chunk_res", "tagger"): {"roc_auc": 0.9129, "pr_auc": 0.4614, "source": "W"},
    ("linear_projection", "embedder"): {"recall": (0.339, 0.478, 0.610, 0.736), "source": "H"},
    ("musicnn", "embedder"): {"recall": (0.354, 0.512, 0.674, 0.797), "source": "H"},
}
PUBLISHED_SOURCES = {
    "W": "Won et al. 2020, MTAT clean split (15,244 / 1,529 / 4,332 clips), full models, 200 epochs",
    "H": "KAIST GCT634 HW2 (2021), MTAT homework subset (6,206 / 1,529 / 1,339 clips): given 1D baseline, "
         "one student's Q1 2D CNN, and the report in seed/ (tuned 2D CNN, Recall@K)",
}
_BUILD_NAMES = ("cnn1d", "cnn2d", "cnn2d_tuned", "crnn", "musicnn", "short_chunk", "short_chunk_res",
                "linear_projection")


def published_mtat(model: str, trained_as: str = "tagger") -> dict[str, Any]:
    """The published MTAT figures for a recorded model name (matched on the
    longest ``build_model`` name it starts with), or ``{}``."""
    matches = [n for n in _BUILD_NAMES if str(model).startswith(n)]
    return PUBLISHED_MTAT.get((max(matches, key=len), trained_as), {}) if matches else {}


def course_table(rows: list[dict] | None = None) -> str:
    """Every model of the course in one Markdown table, beside the published
    MTAT figures (:data:`PUBLISHED_MTAT`), with a legend below.

    ``rows``: result records (default :func:`read_results`). Columns: model
    (its ``label`` when recorded), notebook, trained as (tagger: BCE on tags;
    embedder: triplet loss), parameters, training clips per second, this run's
    test macro ROC-AUC, PR-AUC and Recall@1/2/4/8, then the MTAT columns. A
    missing value shows as ``-``.
    """
    rows = read_results() if rows is None else rows
    rows = sorted(rows, key=lambda r: str(r.get("notebook", "")))       # stable: notebook order, then as recorded
    if not rows:
        return "(no results recorded yet: run the notebooks first)"

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)

    head = ["model", "nb", "trained as", "params", "train clips/s", "ROC-AUC", "PR-AUC",
            "R@1", "R@2", "R@4", "R@8", "MTAT ROC-AUC", "MTAT PR-AUC", "MTAT R@1/2/4/8", "MTAT src"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---"] * 2 + ["---:"] * 11 + ["---"]) + "|"]
    for r in rows:
        kind = r.get("trained_as", "tagger")
        pub = published_mtat(r["model"], kind)
        speed = r.get("train_clips_per_s")
        cells = [str(r.get("label") or r["model"]), str(r.get("notebook", "")), kind,
                 num(r.get("params"), ","), num(speed, ",.0f" if speed and speed >= 100 else ".1f"),
                 num(r.get("roc_auc"), ".3f"), num(r.get("pr_auc"), ".3f"),
                 *(num(r.get(f"R@{k}"), ".3f") for k in (1, 2, 4, 8)),
                 num(pub.get("roc_auc"), ".4g"), num(pub.get("pr_auc"), ".4g"),
                 "/".join(f"{v:.3f}" for v in pub["recall"]) if "recall" in pub else "-", pub.get("source", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    legend = ["", "ROC-AUC, PR-AUC: macro averages over tags on this run's test split; R@K: multi-label "
                  "Recall@K of the test clips' embeddings (cosine): the trained embedding of an embedder, the "
                  "penultimate layer of a tagger (measured in notebook 05 only). train clips/s: measured while training "
                  "(3 clips per triplet for embedders), on this run's hardware.",
              "MTAT columns are published figures on MagnaTagATune, NOT results of this run (other data, "
              "splits and recipes): " + "; ".join(f"{k} = {v}" for k, v in PUBLISHED_SOURCES.items()) + "."]
    return "\n".join(lines + legend)
