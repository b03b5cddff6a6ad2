"""The `edgeface` command line: one module per verb, assembled here. User mistakes print one `error:` line
and exit 2, never a traceback."""
from __future__ import annotations

import sys

import typer

from ..core.errors import EdgefaceError
from . import bench, build, deploy, evaluate, export, info, predict, quantize, train
from .output import console

# In the order `edgeface --help` lists them. Each module defines NAME and command(); heavy imports happen
# inside command(), so a missing optional dependency of one verb never breaks the others.
VERBS = (info, train, evaluate, export, predict, quantize, bench, deploy, build)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="edgeface: blur + head-pose model from PyTorch to edge devices, with measured proof.")
for _verb in VERBS:
    app.command(name=_verb.NAME)(_verb.command)


def escape_(text: str) -> str:
    from rich.markup import escape

    return escape(text)


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the program is: every ``finally`` runs (staging folders and temporary
    files are removed, a video being drawn is finished and moved into place) and the command ends with one
    line and exit 128 + the signal's number. Not a KeyboardInterrupt, which Click would turn into "Aborted!"
    and exit 1, and not an Exception, which a handler could swallow."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def main():
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        app()
    except EdgefaceError as e:
        from rich.markup import escape  # messages hold "edgeface[extra]", which rich would eat as markup

        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        # The last net under the checks each verb makes where paths enter, and under the writers' own mapping
        # (core.io.disk_errors): a full disk, a read-only mount, a name too long is still one line.
        from ..core.io import os_error_message

        console.print(f"[red]error:[/red] {escape_(os_error_message(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        import signal

        signum = getattr(e, "signum", signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the message and exit are not interrupted in turn
        console.print(f"[red]error:[/red] interrupted by {signal.Signals(signum).name}; nothing half-written "
                      f"was left behind", highlight=False, soft_wrap=True)
        sys.exit(128 + signum)
