"""Fleets: deploy a bundle to, roll back, and benchmark many devices at once, through Ansible.

    playbooks/   deploy.yml, rollback.yml, bench.yml and their roles (package data): push a sealed bundle,
                 install the trusted key, verify with each device's own edgeface, swap it in atomically,
                 bench there. They run as they are with plain ``ansible-playbook -i hosts.yml``.
    inventory.py the hosts an inventory (INI or YAML) and --limit select, and their edgeface_* variables
    run.py       runs a playbook through ansible-runner: forks, rolling batches, a rich progress view, and
                 one result per host from its events (ok, unchanged, failed with the reason, unreachable,
                 not attempted)
    report.py    the fleet report: a table per host, JSON, a PNG of latency grouped by device model
    rollout.py   deploy_fleet, rollback_fleet, bench_fleet: what `edgeface deploy|bench --inventory` call

Needs ``pip install 'edgeface[fleet]'`` (ansible-core, ansible-runner) on the machine that drives the fleet;
devices need only edgeface and an SSH server. Exit code ``PARTIAL`` (3) when some host did not succeed.
"""
from __future__ import annotations

PARTIAL = 3   # exit code: some hosts failed, were unreachable or were not attempted (the others succeeded)
