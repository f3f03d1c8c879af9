"""The course's own tooling: what a notebook needs beside the core, and the
machinery around the notebooks.

For the notebooks (importable from ``helpers.course``): the set-up
(:func:`setup`, :func:`open_dataset`), musicnn's published models as course
checkpoints (:func:`pretrained_checkpoint`, :func:`pretrained_model`), the results (:func:`record_result`,
:func:`read_results`, :func:`format_results`, :func:`course_table`) and the
exercises' self-checks (``check_*``).

Around the notebooks: ``run`` (executing every notebook, the run summary),
``grading`` (the student version and the grader), ``exercises`` (grading
one exercise in a clean kernel), ``sandbox`` (the workspace and the kernel
with limits), ``probes`` (the kernel side of the checks); ``python -m helpers``
calls them.
"""
from .checks import (check_cnn2d, check_figure1_table, check_mined_triplet_loss, check_musicnn_front_end,
                     check_recall_at_k, check_residual_block, check_top_k_tags)
from .results import course_table, format_results, read_results, record_result
from .setup import PRETRAINED, open_dataset, pretrained_checkpoint, pretrained_model, setup, summary_line

__all__ = ["setup", "open_dataset", "summary_line", "PRETRAINED", "pretrained_checkpoint", "pretrained_model",
           "record_result",
           "read_results", "format_results", "course_table",
           "check_cnn2d", "check_figure1_table", "check_mined_triplet_loss", "check_musicnn_front_end",
           "check_recall_at_k", "check_residual_block", "check_top_k_tags"]
