"""helpers: the tested package behind the music auto-tagging course notebooks.

The core, what the notebooks teach with (read it module by module):

- ``config``: profiles, dataset / device / progress choice, where files live;
- ``audio``: loading audio files, the log-mel front end;
- ``data``: the on-disk dataset format and its torch Datasets;
- ``models``: building blocks, the homework's and the SOTA models, ``build_model``;
- ``metrics``: ROC-AUC, PR-AUC, chance levels, multi-label Recall@K;
- ``train``: recipes, the training loop, prediction and evaluation, checkpoints;
- ``retrieval``: metric learning (triplet loss, ``fit_triplet``) and retrieval evaluation;
- ``plots``: every figure the notebooks show;
- ``tagging``: tagging an audio file, nearest clips by embedding.

The tools, the course's machinery: ``prepare`` (the synthetic generator,
MagnaTagATune, the writer of the on-disk format) and ``course`` (running the
notebooks, results and the course table, self-checks, student version and
grading). Imports run one way: config, then the core, then the tools.
Command line: ``python -m helpers --help``.
"""
from . import config  # noqa: F401  (first: it silences tqdm's IProgress warning, whatever is imported next)

config.keep_freed_memory(config.choose_fast_paths())     # freed tensors' memory reused, not faulted in anew

__version__ = "0.2.0"
