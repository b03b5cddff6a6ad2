"""What `deploy --inventory` and `bench --inventory` print and return: the fleet table, a summary line, the
JSON, and the exit code (3 = partial: some host failed, was unreachable or was not attempted)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .output import console, out_console, write_json


def finish(outcome, title: str, json_out: Optional[Path], report: Optional[Path]) -> None:
    from rich.console import Console

    from ..fleet import PARTIAL
    from ..fleet.report import make_table

    table_console = out_console if out_console.is_terminal else Console(width=200, file=out_console.file)
    table_console.print(make_table(outcome.rows, title))
    write_json(json_out, outcome.rows)
    if report is not None:
        console.print(f"report: {report}/README.md")
    color = "green" if outcome.complete else "yellow"
    console.print(f"[{color}]{title}: {outcome.summary}[/{color}]", highlight=False)
    if not outcome.complete:
        raise typer.Exit(PARTIAL)
