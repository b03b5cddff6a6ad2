"""Talking to a device over SSH (host side only; a device needs nothing of this).

    ssh.py   SshTarget (system OpenSSH, host keys checked), one-line errors, tar streams that land whole
             or not at all; used by bench/remote.py (bench on the device) and deploy/remote.py (copy a
             bundle there, check it with the device's own edgeface, build, bench)
"""
