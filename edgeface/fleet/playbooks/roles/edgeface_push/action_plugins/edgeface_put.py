"""edgeface_put: copy one local file to the device in one SSH command, renamed into place when complete.

    - edgeface_put: {src: /local/bundle.tar, dest: ~/edgeface/bundles/.incoming-DIGEST.tar}

Ansible's copy module costs two module runs on the device (a stat, then the copy with its checksums) plus the
transfer: a Python start-up each, and most of a rollout's time per host. The bundle archive needs none of that:
the probe already compared digests, and the device's own edgeface verifies every file's sha256 next. So the file
travels as the standard input of one shell command (``cat`` to a ``.part`` sibling, then ``mv``), through the
same connection Ansible's modules use. A connection that cannot pass standard input (no pipelining) gets the
connection's own file transfer instead. A failed write (a full disk) removes the partial file and fails the
task with the device's words ("No space left on device").
"""
from __future__ import annotations

import os
import shlex

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

MAX_STDIN_BYTES = 256 << 20  # larger files go through the connection's file transfer, never all in memory


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(("src", "dest"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        src, dest = self._task.args.get("src"), self._task.args.get("dest")
        if not src or not dest:
            return dict(result, failed=True, msg="edgeface_put needs src and dest")
        if not os.path.isfile(src):
            return dict(result, failed=True, msg=f"{src} is not a file")
        dest = self._remote_expand_user(dest)
        part = dest + ".part"
        try:
            if self._connection.has_pipelining and os.path.getsize(src) <= MAX_STDIN_BYTES:
                with open(src, "rb") as f:
                    data = f.read()
                cmd = (f"umask 022 && cat > {shlex.quote(part)} && mv -f {shlex.quote(part)} {shlex.quote(dest)}"
                       f" || {{ rc=$?; rm -f {shlex.quote(part)}; exit $rc; }}")
                res = self._low_level_execute_command(cmd, in_data=data, sudoable=False)
            else:
                self._connection.put_file(src, part)
                res = self._low_level_execute_command(f"mv -f {shlex.quote(part)} {shlex.quote(dest)}",
                                                      sudoable=False)
        except AnsibleError as e:
            try:  # the connection may be what failed: the device's next probe removes leftovers either way
                self._low_level_execute_command(f"rm -f {shlex.quote(part)}", sudoable=False)
            except AnsibleError:
                pass
            return dict(result, failed=True, msg=str(e))
        if res.get("rc", 1) != 0:
            words = " ".join((res.get("stderr") or res.get("stdout") or "").split())
            return dict(result, failed=True, rc=res.get("rc"), msg=words or f"writing {dest} failed")
        return dict(result, changed=True, dest=dest, size=os.path.getsize(src))
