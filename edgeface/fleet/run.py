"""Run a shipped playbook through ansible-runner and turn its events into one result per host.

Ansible does the parallel SSH work (``--forks``), the rolling batches (``serial``) and the failure threshold
(``max_fail_percentage``); this module only starts it, shows progress (a rich bar over hosts, a line per host
as it finishes) and reads the outcome from the events: the ``edgeface result`` task's value for hosts that
succeeded, the last failure's message for hosts that failed, the connection error for unreachable ones, and
"not attempted" for hosts a stopped rollout never reached.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.errors import EdgefaceError
from .inventory import Host, require_ansible

PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
RESULT_TASK = "edgeface result"
COPY_TASK = "copy the bundle archive"  # the task in roles/edgeface_push: its "changed" means bytes were copied
OK, UNCHANGED, FAILED, UNREACHABLE, STOPPED, NOT_ATTEMPTED = ("ok", "unchanged", "failed", "unreachable", "stopped",
                                                           "not attempted")

STOPPED_REASON = ("stopped with its batch: the batch reached the failure threshold (--max-fail) "
                  "before this host finished")


@dataclass
class HostResult:
    host: str
    status: str                      # deployed | unchanged | rolled back | benched | failed | unreachable | stopped
                                     # (its batch reached the failure threshold first) | not attempted
    reason: Optional[str] = None     # why a host failed, was unreachable or was not attempted
    result: dict = field(default_factory=dict)   # the playbook's edgeface_result for the host
    copied: bool = False             # whether any bundle file was copied to the host
    groups: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status not in (FAILED, UNREACHABLE, STOPPED, NOT_ATTEMPTED)


def short_reason(res: dict, unreachable: bool = False, task: str = "") -> str:
    """One line from an Ansible failure: the device's `error:` line when it printed one, else the message
    without Ansible's 'Task failed: Module failed:' prefixes, with the task it failed in (unless it is one of
    the playbooks' own 'report why ...' tasks, whose message says it) and the output's last line."""
    # The script module runs under a tty, so the device's stderr may arrive in stdout.
    out = [ln.strip() for key in ("stderr_lines", "stdout_lines") for ln in (res.get(key) or []) if ln.strip()]
    out += [ln.strip() for key in ("module_stderr", "module_stdout") for ln in str(res.get(key) or "").splitlines()
            if ln.strip()]
    lines = [ln for ln in out if ln.startswith("error:")]
    text = lines[-1][len("error:"):] if lines else str(res.get("msg") or "failed")
    text = re.sub(r"^(Task failed: |Module failed: |Action failed: )+", "", " ".join(text.split()))
    step = task.split(" : ")[-1]
    if not lines and not unreachable and step and not step.startswith(("report why", "stop on")):
        text = f"{step}: {text}" + (f" (rc {res['rc']})" if isinstance(res.get("rc"), int) else "") \
            + (f": {out[-1]}" if out else "")
    ssh_said = re.search(r"over ssh: (ssh: .*)$", text, re.IGNORECASE)  # keep ssh's own words when it gave them
    if ssh_said and (unreachable or text.startswith("unreachable: ")):
        text = ("unreachable: " if text.startswith("unreachable: ") else "") + ssh_said.group(1)
    errno = re.search(r"\[Errno \d+\] ([^:']+)", text)
    if errno and "copying the bundle failed" in text:
        text = f"copying the bundle failed: {errno.group(1).strip()}"
    return text[:300]


class Events:
    """ansible-runner's event handler: collects per-host outcomes and drives the progress view."""

    def __init__(self, hosts: list[Host], console=None):
        self.hosts = hosts
        self.results: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.unreachable: dict[str, str] = {}
        self.copied: set[str] = set()
        self.seen: set[str] = set()
        self.console = console
        self.progress = None
        self.bar = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("hosts"), TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.__enter__()
            self.bar = self.progress.add_task("starting ansible", total=len(self.hosts))
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _done(self, host: str, line: str) -> None:
        if self.progress is not None:
            self.progress.advance(self.bar)
            self.progress.console.print(f"{host}: {line}", highlight=False, markup=False)

    def __call__(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host, task = data.get("host"), data.get("task") or ""
        if kind == "playbook_on_task_start" and self.progress is not None:
            self.progress.update(self.bar, description=task.split(" : ")[-1][:40])
        if not host:
            return True
        self.seen.add(host)
        res = data.get("res") or {}
        if kind == "runner_on_ok":
            if task.endswith(COPY_TASK) and res.get("changed"):
                self.copied.add(host)
            if task == RESULT_TASK and isinstance(res.get("edgeface_result"), dict):
                self.results[host] = res["edgeface_result"]
                r = res["edgeface_result"]
                self._done(host, f"{r.get('status')} {str(r.get('digest') or '')[:12]}")
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            self.failed[host] = short_reason(res, task=task)
        elif kind == "runner_on_unreachable":
            self.unreachable[host] = short_reason(res, unreachable=True)
        elif kind == "playbook_on_stats":
            pass
        return True

    def finish(self, stats: dict) -> list[HostResult]:
        out = []
        failures = set((stats or {}).get("failures") or {})
        dark = set((stats or {}).get("dark") or {})
        for h in self.hosts:
            name = h.name
            if name in dark or (name in self.unreachable and name not in self.results):
                r = HostResult(name, UNREACHABLE, self.unreachable.get(name, "unreachable"))
            elif name in failures or (name in self.failed and name not in self.results):
                reason = self.failed.get(name)
                if reason and reason.startswith("unreachable: "):  # edgeface_probe turned it into a failure
                    r = HostResult(name, UNREACHABLE, reason[len("unreachable: "):])
                elif reason:
                    r = HostResult(name, FAILED, reason)
                else:
                    r = HostResult(name, STOPPED, STOPPED_REASON)
            elif name in self.results:
                res = self.results[name]
                r = HostResult(name, str(res.get("status") or OK), result=res)
            elif name in self.seen:  # Ansible stopped it mid-play: its batch reached max_fail_percentage
                r = HostResult(name, STOPPED, STOPPED_REASON)
            else:
                r = HostResult(name, NOT_ATTEMPTED, "the rollout stopped before this host's batch "
                                                    "(the failure threshold was reached)")
            r.copied, r.groups = name in self.copied, h.groups
            out.append(r)
            if r.status in (FAILED, UNREACHABLE) and self.progress is not None:
                self.progress.console.print(f"{name}: {r.status}: {r.reason}", highlight=False, markup=False)
        return out


def run_playbook(playbook: str, inventory: str | Path, hosts: list[Host], extravars: dict, *,
                 limit: Optional[str] = None, forks: int = 50, console=None) -> list[HostResult]:
    """Run ``playbooks/<playbook>`` over the inventory; one HostResult per selected host, in inventory order."""
    ansible_runner = require_ansible()
    if forks < 1:
        raise EdgefaceError(f"--forks must be at least 1, got {forks}")
    path = PLAYBOOKS / playbook
    private = Path(tempfile.mkdtemp(prefix="edgeface-fleet-"))
    bindir = str(Path(sys.executable).parent)
    env = {"PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "ANSIBLE_PIPELINING": "True",
           "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "True",
           "ANSIBLE_DEPRECATION_WARNINGS": "False", "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
           # ansible-runner turns host key checking off unless told otherwise; devices' keys are checked, as with
           # --host (a user who wants otherwise sets ANSIBLE_HOST_KEY_CHECKING=False).
           "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True")}
    events = Events(hosts, console)
    try:
        with events:
            runner = ansible_runner.run(private_data_dir=str(private), playbook=str(path),
                                        inventory=str(Path(inventory).absolute()), extravars=extravars,
                                        limit=limit, forks=forks, envvars=env, quiet=True,
                                        event_handler=events)
            stats = runner.stats
            if not events.seen:  # ansible-playbook itself failed (a bad option, an unreadable playbook)
                tail = (runner.stdout.read() if hasattr(runner.stdout, "read") else "")[-600:]
                raise EdgefaceError(f"ansible-playbook did not run ({runner.status}): {' '.join(tail.split())[-300:]}")
            return events.finish(stats)
    finally:
        shutil.rmtree(private, ignore_errors=True)
