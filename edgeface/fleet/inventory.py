"""The hosts an Ansible inventory (INI or YAML, groups, host and group variables) and ``--limit`` select.

Read with ansible-core's own inventory code, so edgeface sees exactly the hosts and variables the playbook
will: ``edgeface_target`` (which bundle a host gets), ``edgeface_device_model`` (a name for the report).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.errors import EdgefaceError

FLEET_EXTRA = "pip install 'edgeface[fleet]'"


def require_ansible():
    """ansible_runner, or one error line naming the extra."""
    try:
        import ansible  # noqa: F401
        import ansible_runner
    except ImportError:
        raise EdgefaceError(f"fleet commands (--inventory) need Ansible (ansible-core and ansible-runner): "
                            f"{FLEET_EXTRA}") from None
    return ansible_runner


@dataclass
class Host:
    name: str
    groups: list[str]
    vars: dict = field(default_factory=dict)   # the edgeface_* variables only (no connection secrets)

    @property
    def target(self) -> Optional[str]:
        return self.vars.get("edgeface_target")


def load_inventory(path: str | Path, limit: Optional[str] = None) -> list[Host]:
    """The selected hosts in inventory order; EdgefaceError for a missing or unreadable inventory, or a
    --limit that matches nothing."""
    require_ansible()
    p = Path(path)
    if not p.exists():
        raise EdgefaceError(f"--inventory {p} does not exist: pass an Ansible inventory (INI or YAML hosts file)")
    from ansible import constants as C
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    C.INVENTORY_UNPARSED_IS_FAILED = True  # a file no inventory plugin reads is an error, not "no hosts"
    loader = DataLoader()
    try:
        inv = InventoryManager(loader=loader, sources=[str(p.absolute())])
        if limit:
            inv.subset(limit)
        hosts = inv.get_hosts("all")
    except AnsibleError as e:
        msg = " ".join(str(e).split())[:300]
        raise EdgefaceError(f"--inventory {p} is not an inventory Ansible can read ({msg}); see docs/fleet.md "
                            f"for an example") from None
    if not hosts:
        if limit:
            raise EdgefaceError(f"--limit {limit} matches no host of {p}: name a group or host it lists")
        raise EdgefaceError(f"--inventory {p} lists no hosts; see docs/fleet.md for an example")
    vm = VariableManager(loader=loader, inventory=inv)
    out = []
    for h in hosts:
        v = vm.get_vars(host=h, include_hostvars=False)
        out.append(Host(name=h.name, groups=[g.name for g in h.get_groups() if g.name != "all"],
                        vars={k: v[k] for k in v if str(k).startswith("edgeface_")}))
    return out
