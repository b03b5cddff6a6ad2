"""edgeface_put: pack a bundle folder and copy it to the device in one SSH command, renamed into place when complete.

    - edgeface_put: {bundle: /local/bundle_dir, dest: ~/edgeface/bundles/.incoming-DIGEST.tar}

Ansible's copy module costs two module runs on the device (a stat, then the copy with its checksums) plus the
transfer, and a ``tar`` command task one more module run here: a Python start-up each, and most of a rollout's
time per host. The bundle needs none of that: the probe already compared digests, and the device's own edgeface
verifies every file's sha256 next. So the folder is packed here, in memory (a bundle is a few MB), and travels
as the standard input of one shell command (``cat`` to a ``.part`` sibling, then ``mv``), through the same
connection Ansible's modules use. A bundle too large for memory, or a connection that cannot pass standard input
(no pipelining), goes through a temporary archive and the connection's own file transfer. A failed write (a full
disk) removes the partial file and fails the task with the device's words ("No space left on device").
"""
from __future__ import annotations

import io
import os
import shlex
import tarfile
import tempfile

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

MAX_STDIN_BYTES = 256 << 20  # larger bundles go through a temporary file and the connection's file transfer


def bundle_files(bundle: str) -> list[tuple[str, str]]:
    """(path, name in the archive) for each file of the sealed bundle; a link or a special file is refused
    (a sealed bundle has none, and the device would refuse the archive)."""
    out = []
    for folder, dirs, files in os.walk(bundle):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                raise AnsibleError(f"{path} is not a plain file: a sealed bundle holds plain files only")
            out.append((path, os.path.relpath(path, bundle)))
    return out


def pack(files: list[tuple[str, str]], fileobj) -> None:
    with tarfile.open(fileobj=fileobj, mode="w:") as tar:
        for path, name in files:
            tar.add(path, arcname=name, recursive=False)


class ActionModule(ActionBase):
    # False: with True, Ansible makes a temporary folder on the device before run() and removes it after, two
    # more SSH commands per host; the archive goes straight to its .part file instead.
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("bundle", "dest"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        bundle, dest = self._task.args.get("bundle"), self._task.args.get("dest")
        if not bundle or not dest:
            return dict(result, failed=True, msg="edgeface_put needs bundle and dest")
        if not os.path.isfile(os.path.join(bundle, "manifest.json")):
            return dict(result, failed=True, msg=f"{bundle} is not a bundle folder (no manifest.json)")
        dest = self._remote_expand_user(dest)
        part = dest + ".part"
        try:
            files = bundle_files(bundle)
            size = sum(os.path.getsize(p) for p, _ in files)
            if self._connection.has_pipelining and size <= MAX_STDIN_BYTES:
                buf = io.BytesIO()
                pack(files, buf)
                cmd = (f"umask 022 && cat > {shlex.quote(part)} && mv -f {shlex.quote(part)} {shlex.quote(dest)}"
                       f" || {{ rc=$?; rm -f {shlex.quote(part)}; exit $rc; }}")
                res = self._low_level_execute_command(cmd, in_data=buf.getvalue(), sudoable=False)
            else:
                with tempfile.NamedTemporaryFile(suffix=".tar") as archive:
                    pack(files, archive)
                    archive.flush()
                    self._connection.put_file(archive.name, part)
                res = self._low_level_execute_command(f"mv -f {shlex.quote(part)} {shlex.quote(dest)}",
                                                      sudoable=False)
        except AnsibleError as e:
            try:  # the connection may be what failed: the device's next probe removes leftovers either way
                self._low_level_execute_command(f"rm -f {shlex.quote(part)}", sudoable=False)
            except AnsibleError:
                pass
            return dict(result, failed=True, msg=str(e))
        except OSError as e:
            return dict(result, failed=True, msg=f"packing {bundle} failed: {e}")
        if res.get("rc", 1) != 0:
            words = " ".join((res.get("stderr") or res.get("stdout") or "").split())
            return dict(result, failed=True, rc=res.get("rc"), msg=words or f"writing {dest} failed")
        return dict(result, changed=True, dest=dest, size=size)
