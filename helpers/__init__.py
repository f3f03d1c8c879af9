"""helpers: the tested package behind the music auto-tagging course notebooks.

One module per concern: ``audio`` (loading, log-mel front end), ``synth``
(the synthetic tagged-music dataset), ``datasets`` (on-disk format, torch
Datasets), ``mtat`` (MagnaTagATune), ``models``, ``metrics``, ``train`` and
``plots``. Command line: ``python -m helpers --help``.
"""
__version__ = "0.1.0"
