"""The course's results: what each notebook recorded, and the final table.

Results that notebooks report are appended to a JSON-lines file
(:func:`helpers.config.results_path`), one record per trained model
(:func:`record_result`); the run summary and notebook 05 read them back
(:func:`read_results`) and render them (:func:`format_results`,
:func:`course_table`) with the course's one table renderer,
:func:`format_table`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..config import results_path

__all__ = ["record_result", "read_results", "format_table", "format_results", "PUBLISHED_MTAT", "PUBLISHED_SOURCES",
           "published_mtat", "BASELINES", "comparison_table", "course_table"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None,
                 markdown: bool = False) -> str:
    """Render a table: ``header`` names the columns, ``rows`` holds their
    cells (anything ``str`` shows), ``align`` one letter per column, ``l``
    (left, the default) or ``r`` (right). Plain text has the columns
    separated by two spaces and a rule of dashes under the header;
    ``markdown`` gives a Markdown table (``---:`` for right-aligned columns).
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row and the alignment need {len(header)} cells, one per column")
    cells = [[str(c) for c in row] for row in [header, *rows]]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
        return "\n".join([lines[0], rule] + lines[1:])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(row) for row in cells[1:]])


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
    return format_table(columns, [[cell(r.get(c, "-")) for c in columns] for r in rows])


# ----------------------------------------------------------------------------
# The course's final table (notebook 05 and output/summary.md)
# ----------------------------------------------------------------------------

#: Published MagnaTagATune figures (REFERENCE.md sections 1 and 3), by
#: ``build_model`` name and how the model was trained. They come from other
#: splits, recipes and hardware than any run of this course: references, never
#: results. Source ``W``: Won et al. 2020, clean split (15,244 / 1,529 / 4,332
#: clips). ``H``: KAIST GCT634 HW2 (2021), the homework's subset (6,206 / 1,529
#: / 1,339 clips): the given 1D baseline, one student's Q1 2D CNN, and the
#: report in ``seed/`` (tuned 2D CNN, Recall@K). ``P``: Pons & Serra 2019, the
#: ``experiment.result`` of musicnn's ``MTT_musicnn`` (its MTT test set).
PUBLISHED_MTAT: dict[tuple[str, str], dict[str, Any]] = {
    ("cnn1d", "tagger"): {"roc_auc": 0.61, "source": "H"},
    ("cnn2d", "tagger"): {"roc_auc": 0.77, "source": "H"},
    ("cnn2d_tuned", "tagger"): {"roc_auc": 0.86, "source": "H"},
    ("crnn", "tagger"): {"roc_auc": 0.8722, "pr_auc": 0.3625, "source": "W"},
    ("musicnn", "tagger"): {"roc_auc": 0.9106, "pr_auc": 0.4493, "source": "W"},
    ("musicnn_pons", "tagger"): {"roc_auc": 0.9067, "pr_auc": 0.3831, "source": "P"},
    ("short_chunk", "tagger"): {"roc_auc": 0.9126, "pr_auc": 0.4590, "source": "W"},
    ("short_chunk_res", "tagger"): {"roc_auc": 0.9129, "pr_auc": 0.4614, "source": "W"},
    ("linear_projection", "embedder"): {"recall": (0.339, 0.478, 0.610, 0.736), "source": "H"},
    ("musicnn", "embedder"): {"recall": (0.354, 0.512, 0.674, 0.797), "source": "H"},
}
PUBLISHED_SOURCES = {
    "W": "Won et al. 2020, MTAT clean split (15,244 / 1,529 / 4,332 clips), full models, 200 epochs",
    "H": "KAIST GCT634 HW2 (2021), MTAT homework subset (6,206 / 1,529 / 1,339 clips): given 1D baseline, "
         "one student's Q1 2D CNN, and the report in seed/ (tuned 2D CNN, Recall@K)",
    "P": "Pons & Serra 2019, musicnn's MTT_musicnn on its MTT test set (experiment.result of musicnn 0.1.0)",
}
_BUILD_NAMES = ("cnn1d", "cnn2d", "cnn2d_tuned", "crnn", "musicnn", "musicnn_pons", "short_chunk",
                "short_chunk_res", "linear_projection")


def published_mtat(model: str, trained_as: str = "tagger") -> dict[str, Any]:
    """The published MTAT figures for a recorded model name (matched on the
    longest ``build_model`` name it starts with), or ``{}``."""
    matches = [n for n in _BUILD_NAMES if str(model).startswith(n)]
    return PUBLISHED_MTAT.get((max(matches, key=len), trained_as), {}) if matches else {}


#: The baselines of notebook 01, listed first in every comparison.
BASELINES = ("prior", "logistic_regression")


def comparison_table(rows: list[dict]) -> str:
    """The plain-text comparison of notebooks 02 and 03: each recorded model
    (``rows``, in order) with its parameters, epochs, training speed and test
    scores, and beside them the homework's own MagnaTagATune ROC-AUC where the
    homework reports one (source ``H`` of :data:`PUBLISHED_MTAT`: other data,
    a reference, not a result of this run)."""
    if not rows:
        return "(no results recorded yet)"

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)

    table = []
    for r in rows:
        pub = published_mtat(r["model"], r.get("trained_as", "tagger"))
        homework = pub.get("roc_auc") if pub.get("source") == "H" else None
        speed = r.get("train_clips_per_s")
        table.append([str(r.get("label") or r["model"]), num(r.get("params"), ","), num(r.get("epochs"), "d"),
                      num(speed, ",.0f"), num(r.get("roc_auc"), ".4f"), num(r.get("pr_auc"), ".4f"),
                      num(homework, ".2f")])
    head = ["model", "params", "epochs", "train clips/s", "ROC-AUC", "PR-AUC", "homework's MTAT ROC-AUC"]
    return format_table(head, table, "lrrrrrr") + ("\n(the last column: the homework report's figures on "
                                                   "MagnaTagATune, other data; a reference, not a result of this run)")


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

    def with_interval(r: dict, key: str) -> str:
        low_high = r.get(f"{key}_ci")
        return num(r.get(key), ".3f") + (f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "")

    head = ["model", "nb", "trained as", "params", "train clips/s", "ROC-AUC", "PR-AUC",
            "R@1", "R@2", "R@4", "R@8", "MTAT ROC-AUC", "MTAT PR-AUC", "MTAT R@1/2/4/8", "MTAT src"]
    table = []
    for r in rows:
        kind = r.get("trained_as", "tagger")
        pub = published_mtat(r["model"], kind)
        speed = r.get("train_clips_per_s")
        cells = [str(r.get("label") or r["model"]), str(r.get("notebook", "")), kind,
                 num(r.get("params"), ","), num(speed, ",.0f" if speed and speed >= 100 else ".1f"),
                 with_interval(r, "roc_auc"), with_interval(r, "pr_auc"),
                 *(num(r.get(f"R@{k}"), ".3f") for k in (1, 2, 4, 8)),
                 num(pub.get("roc_auc"), ".4g"), num(pub.get("pr_auc"), ".4g"),
                 "/".join(f"{v:.3f}" for v in pub["recall"]) if "recall" in pub else "-", pub.get("source", "-")]
        table.append(cells)
    legend = ["", "ROC-AUC, PR-AUC: macro averages over tags on this run's test split, [95 % interval] from 1,000 "
                  "bootstrap resamples of the test songs; R@K: multi-label "
                  "Recall@K of the test clips' embeddings (cosine similarity, or the Euclidean distance of an embedder whose "
                  "label says so), neighbours from the query's own song left out: the "
                  "trained embedding of an embedder, the penultimate layer of a tagger (measured in notebook 05 only). "
                  "baseline: notebook 01's prior-only predictor and logistic regression on log-mel band statistics. train clips/s: measured while training "
                  "(3 clips per triplet for embedders), on this run's hardware.",
              "MTAT columns are published figures on MagnaTagATune, NOT results of this run (other data, "
              "splits and recipes): " + "; ".join(f"{k} = {v}" for k, v in PUBLISHED_SOURCES.items()) + "."]
    return "\n".join([format_table(head, table, "lll" + "r" * 11 + "l", markdown=True)] + legend)
