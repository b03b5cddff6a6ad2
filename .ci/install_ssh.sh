#!/bin/sh
# OpenSSH server for tests/test_ssh.py (the tests start their own sshd on 127.0.0.1; none runs as a service).
# Idempotent: does nothing when sshd is already installed.
set -eu
if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
# sshd started as root needs its privilege-separation directory.
$SUDO mkdir -p /run/sshd
