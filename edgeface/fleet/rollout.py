"""What `edgeface deploy --inventory`, `deploy --inventory --rollback` and `bench BUNDLE --inventory` do."""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.errors import EdgefaceError
from .inventory import Host, load_inventory
from .report import host_rows, summary
from .run import HostResult, run_playbook


@dataclass
class FleetOutcome:
    rows: list[dict]                 # the report's rows, one per selected host
    results: list[HostResult]
    bundles: dict = field(default_factory=dict)   # target -> bundle folder shipped

    @property
    def complete(self) -> bool:
        return all(r.succeeded for r in self.results)

    @property
    def summary(self) -> str:
        return summary(self.rows)


def rollout_vars(hosts: list[Host], serial: Optional[int], max_fail: Optional[int]) -> dict:
    """Ansible's serial and max_fail_percentage from --serial N (hosts per batch) and --max-fail N (this many
    failed hosts in one batch stop the rollout: the later batches are not attempted)."""
    out: dict = {}
    if serial is not None:
        if serial < 1:
            raise EdgefaceError(f"--serial must be at least 1 host per batch, got {serial}")
        out["edgeface_serial"] = serial
    if max_fail is not None:
        if max_fail < 1:
            raise EdgefaceError(f"--max-fail must be at least 1 (the number of failed hosts in a batch that stops "
                                f"the rollout), got {max_fail}")
        batch = min(serial or len(hosts), len(hosts))
        # Ansible stops when failed/batch > percentage: N-1 failures pass, N stop.
        out["edgeface_max_fail_percentage"] = math.floor(100 * (max_fail - 1) / batch)
    return out


def check_bundle(bundle: str | Path) -> tuple[Path, dict]:
    """A sealed, intact bundle folder (checked here before any device sees it): (path, manifest)."""
    from ..runtime.bundle import ANY_DEVICE, open_bundle

    p = Path(bundle)
    info = open_bundle(p, device=ANY_DEVICE)
    return p.absolute(), info.manifest


def _model_names(hosts: list[Host]) -> dict:
    return {h.name: h.vars["edgeface_device_model"] for h in hosts if h.vars.get("edgeface_device_model")}


def _check_report(report: Optional[str | Path]) -> None:
    if report is not None:
        from .report import check_report_dir

        check_report_dir(report)


def _report(outcome: "FleetOutcome", report: Optional[str | Path], title: str, host_files: Optional[Path] = None):
    if report is not None:
        from .report import write_report

        write_report(outcome.rows, report, title, host_files=host_files)


def deploy_fleet(inventory: str | Path, *, target: Optional[str] = None, bundle: Optional[str | Path] = None,
                 limit: Optional[str] = None, forks: int = 50, serial: Optional[int] = None,
                 max_fail: Optional[int] = None, report: Optional[str | Path] = None, console=None,
                 build_options: Optional[dict] = None) -> FleetOutcome:
    """Ship a bundle to every selected host: ``bundle`` (an existing sealed bundle, shipped as it is: hosts
    already running its digest report "unchanged"), or one bundle built per target (host variable
    ``edgeface_target``, else ``target``) with deploy's own pipeline and ``build_options``."""
    _check_report(report)
    hosts = load_inventory(inventory, limit)
    extravars = rollout_vars(hosts, serial, max_fail)
    bundles: dict[str, Path] = {}
    if bundle is not None:
        path, manifest = check_bundle(bundle)
        other = [h.name for h in hosts if h.target and h.target != manifest["target"]]
        if other:
            raise EdgefaceError(f"--bundle {bundle} is for target {manifest['target']!r} but edgeface_target of "
                                f"{', '.join(other[:5])}{' ...' if len(other) > 5 else ''} differs: --limit them out "
                                f"or deploy with --target")
        bundles[manifest["target"]] = path
        extravars["edgeface_bundle"] = str(path)
    else:
        missing = [h.name for h in hosts if not (h.target or target)]
        if missing:
            raise EdgefaceError(f"no target for {', '.join(missing[:5])}: pass --target, or set edgeface_target for "
                                f"these hosts (or their group) in the inventory")
        wanted = list(dict.fromkeys(h.target or target for h in hosts))
        opts = dict(build_options or {})
        if opts.get("out") is not None and len(wanted) > 1:
            raise EdgefaceError(f"the inventory's hosts need {len(wanted)} targets ({', '.join(wanted)}), one bundle "
                                f"each: leave --out out (bundles/TARGET-PRECISION)")
        from ..deploy import deploy as build

        for t in wanted:
            result = build(t, console=console, **opts)
            bundles[t] = result.bundle.absolute()
        if target in bundles or len(wanted) == 1:  # hosts without an edgeface_target of their own get --target's
            extravars["edgeface_bundle"] = str(bundles[target if target in bundles else wanted[0]])
        extravars["edgeface_bundles"] = {t: str(p) for t, p in bundles.items()}
    if console is not None:
        console.print(f"deploying to {len(hosts)} host(s) with ansible (forks {forks}"
                      f"{f', batches of {serial}' if serial else ''})", highlight=False)
    results = run_playbook("deploy.yml", inventory, hosts, extravars, limit=limit, forks=forks, console=console)
    outcome = FleetOutcome(host_rows(results, _model_names(hosts)), results, {t: str(p) for t, p in bundles.items()})
    _report(outcome, report, "edgeface fleet deploy")
    return outcome


def rollback_fleet(inventory: str | Path, *, limit: Optional[str] = None, forks: int = 50,
                   serial: Optional[int] = None, max_fail: Optional[int] = None, report: Optional[str | Path] = None,
                   console=None) -> FleetOutcome:
    """Every selected device's `current` goes back to the `previous` bundle it kept."""
    _check_report(report)
    hosts = load_inventory(inventory, limit)
    results = run_playbook("rollback.yml", inventory, hosts, rollout_vars(hosts, serial, max_fail), limit=limit,
                           forks=forks, console=console)
    outcome = FleetOutcome(host_rows(results, _model_names(hosts)), results)
    _report(outcome, report, "edgeface fleet rollback")
    return outcome


def bench_fleet(bundle: str | Path, inventory: str | Path, *, limit: Optional[str] = None, forks: int = 50,
                bench_args: Optional[list[str]] = None, report: Optional[str | Path] = None,
                console=None) -> FleetOutcome:
    """The device's own `edgeface bench` of ``bundle`` on every selected host (copied there first unless the
    device runs it already, and removed again: bench never changes what a device runs); one report."""
    _check_report(report)
    hosts = load_inventory(inventory, limit)
    path, manifest = check_bundle(bundle)
    fetched = Path(tempfile.mkdtemp(prefix="edgeface-fleet-bench-"))
    try:
        extravars = {"edgeface_bundle": str(path), "edgeface_report_dir": str(fetched)}
        if bench_args:
            extravars["edgeface_bench_args"] = list(bench_args)
        if console is not None:
            console.print(f"benchmarking {path.name} on {len(hosts)} host(s) with ansible (forks {forks})",
                          highlight=False)
        results = run_playbook("bench.yml", inventory, hosts, extravars, limit=limit, forks=forks, console=console)
        outcome = FleetOutcome(host_rows(results, _model_names(hosts)), results, {manifest["target"]: str(path)})
        _report(outcome, report, f"edgeface fleet bench: {path.name}", host_files=fetched / "hosts")
        return outcome
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
