"""The `edgeface` command (``app.py``): one module per verb, each defining NAME and command()."""
from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
