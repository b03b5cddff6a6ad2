#!/usr/bin/env bash
# Builds (or reuses) a Debian bookworm arm64 userland with python3, run through qemu-user on x86.
# Prints the rootfs path as its last line of stdout. Cached per version key, so only the first run on a
# machine pays the ~5 minutes of debootstrap's emulated second stage.
#
#   EDGEFACE_ARM_CACHE   cache folder (default /var/cache/edgeface; falls back to ~/.cache/edgeface)
#   EDGEFACE_ARM_MIRROR  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

ROOTFS_KEY="bookworm-arm64-minbase-python3-v1"   # bump when the package list below changes
MIRROR="${EDGEFACE_ARM_MIRROR:-http://deb.debian.org/debian}"
CACHE="${EDGEFACE_ARM_CACHE:-/var/cache/edgeface}"
mkdir -p "$CACHE" 2>/dev/null || CACHE="$HOME/.cache/edgeface"
mkdir -p "$CACHE"
ROOT="$CACHE/rootfs-$ROOTFS_KEY"

log() { echo "[arm-rootfs] $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "needs root (apt-get, binfmt_misc, chroot); run under sudo"; exit 2
  fi
}

ensure_host_tools() {
  local missing=()
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >&2
  fi
}

ensure_binfmt() {
  # Containers often start without binfmt_misc mounted; the kernel only runs aarch64 ELF through qemu
  # once the handler is registered there (with the F flag, so the chroot needs no qemu binary of its own).
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >&2 || true
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    log "could not register qemu-aarch64 with binfmt_misc"; exit 3
  fi
}

build_rootfs() {
  local tmp="$ROOT.partial"
  rm -rf "$tmp"
  log "debootstrap first stage -> $tmp"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm "$tmp" "$MIRROR" >&2
  log "debootstrap second stage under qemu (a few minutes)"
  chroot "$tmp" /debootstrap/debootstrap --second-stage >&2
  # Trim what the tests never need: apt lists and the package cache.
  rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"* || true
  chroot "$tmp" /usr/bin/python3 -c "import platform; assert platform.machine() == 'aarch64', platform.machine()"
  echo "$ROOTFS_KEY" > "$tmp/.edgeface-rootfs"
  # Rename into place last: a killed build leaves only *.partial, never a rootfs that looks complete.
  mv "$tmp" "$ROOT"
}

need_root
ensure_host_tools
ensure_binfmt
if [ -f "$ROOT/.edgeface-rootfs" ] && [ "$(cat "$ROOT/.edgeface-rootfs")" = "$ROOTFS_KEY" ]; then
  log "cached rootfs $ROOT"
else
  build_rootfs
fi
echo "$ROOT"
