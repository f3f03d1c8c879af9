"""Preparing datasets in the course's on-disk format (read by
:mod:`helpers.data`): ``writer`` (the resumable writer of the format),
``synth`` (the synthetic tagged-music generator) and ``mtat`` (MagnaTagATune:
download, verification, unpacking, splits, decoding). Run them with
``python -m helpers prepare synthetic`` or ``python -m helpers prepare mtat``.
"""
