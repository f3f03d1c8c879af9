"""Every figure the notebooks show. Each function draws on a new matplotlib
figure (or the given axes), labels its axes with units, and returns the
figure so a notebook can save it."""
from __future__ import annotations

# --- figures of notebooks 00-03 ----------------------------------------------

# --- figures of notebooks 04-06 ----------------------------------------------
