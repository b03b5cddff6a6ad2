"""Where the CLI writes: progress and errors to stderr, results to stdout, --json reports to files."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

from ..core.io import atomic_write_json, check_output_dir, check_output_file  # noqa: F401 (verbs use them)

console = Console(stderr=True)
out_console = Console()


def write_json(path: Optional[Path], obj) -> None:
    """--json FILE: written atomically, so a failed command (or an object JSON cannot hold) leaves no file,
    half or temporary, behind."""
    if path is not None:
        check_output_file(path, "--json")
        atomic_write_json(path, obj)


def table_console() -> Console:
    """Where tables go: stdout; piped output (logs, CI) has no terminal width to respect, so it gets 200 columns
    rather than rich's 80, and no header is squeezed to "blur_spea…"."""
    if out_console.is_terminal:
        return out_console
    return Console(width=200, file=out_console.file)
