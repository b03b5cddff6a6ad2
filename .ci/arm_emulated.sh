#!/usr/bin/env bash
# The ARM proof's setup: a Debian arm64 userland (qemu-user through binfmt_misc) holding edgeface's
# torch-free runtime (ncnn, numpy, opencv-python-headless, pyyaml, typer, rich as aarch64 wheels, ncnn at
# the x86 version from constraints.txt). tests/test_arm_emulated.py then deploys the rpi bundle on x86
# and runs it in there (cortex-a72 = Pi 4, fp16 off: equal to x86 within 1e-4; cortex-a76 = Pi 5, fp16 on).
#
# Sourced by .ci/run: exports EDGEFACE_ARM_ROOTFS on success, or EDGEFACE_ARM_ROOTFS_ERROR (so the test
# fails instead of skipping) and never exits the sourcing shell. Run directly, it also prints the JSON of
# the check (scripts/arm_emulated_check.py).
#
# Cost: ~7 min from scratch on 2 cores (debootstrap's emulated second stage dominates); seconds when the
# rootfs (/var/cache/edgeface/rootfs-*) and wheels (/var/cache/edgeface/wheels-*) are cached.

_edgeface_arm_prepare() (
  set -euo pipefail
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  root="$(bash "$repo/.ci/arm_rootfs.sh" | tail -n 1)"
  [ -x "$root/usr/bin/python3" ] || { echo "[arm] no python3 in $root" >&2; exit 1; }
  cache="$(dirname "$root")"
  py="${PYTHON:-python3}"

  # Exact pins from constraints.txt: the aarch64 ncnn must be the x86 one's version.
  pin() { grep -i -E "^$1==" "$repo/constraints.txt" | head -n 1; }
  pins=()
  for name in ncnn numpy opencv-python-headless PyYAML typer rich; do
    p="$(pin "$name")"
    [ -n "$p" ] || { echo "[arm] $name is not pinned in constraints.txt" >&2; exit 1; }
    pins+=("$p")
  done
  platform_args=(--only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64
                 --python-version 3.11 --implementation cp --abi cp311)
  key="$(printf '%s\n' "${pins[@]}" "${platform_args[@]}" site-v1 | sha256sum | cut -c1-16)"
  wheels="$cache/wheels-$key"
  if [ ! -f "$wheels/.complete" ]; then
    echo "[arm] downloading aarch64 wheels: ${pins[*]}" >&2
    rm -rf "$wheels.partial" && mkdir -p "$wheels.partial"
    # ncnn without its optional model-zoo dependencies (requests, tqdm, portalocker): import needs numpy only.
    "$py" -m pip download -q --disable-pip-version-check --no-deps "${platform_args[@]}" -d "$wheels.partial" "${pins[0]}" >&2
    "$py" -m pip download -q --disable-pip-version-check "${platform_args[@]}" -d "$wheels.partial" \
      -c "$repo/constraints.txt" "${pins[@]:1}" >&2
    touch "$wheels.partial/.complete"
    rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
  fi
  site="$root/opt/site"
  if [ ! -f "$site/.edgeface-site-$key" ]; then
    echo "[arm] installing the wheels into $site" >&2
    rm -rf "$site"
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-index --find-links "$wheels" --no-deps \
      "${platform_args[@]}" --target "$site" "$wheels"/*.whl >&2
    touch "$site/.edgeface-site-$key"
  fi
  # torch must not be there: the check proves the runtime does not need it.
  if [ -d "$site/torch" ]; then echo "[arm] torch found in $site" >&2; exit 1; fi
  echo "$root"
)

if _edgeface_arm_root="$(_edgeface_arm_prepare)"; then
  export EDGEFACE_ARM_ROOTFS="$_edgeface_arm_root"
  unset EDGEFACE_ARM_ROOTFS_ERROR
  echo "[arm] EDGEFACE_ARM_ROOTFS=$EDGEFACE_ARM_ROOTFS" >&2
else
  export EDGEFACE_ARM_ROOTFS_ERROR="the aarch64 rootfs could not be prepared (see the [arm] lines above)"
  echo "[arm] $EDGEFACE_ARM_ROOTFS_ERROR" >&2
fi
unset _edgeface_arm_root

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run directly: do the check too
  [ -n "${EDGEFACE_ARM_ROOTFS:-}" ] || exit 1
  cd "$(dirname "$0")/.." && exec "${PYTHON:-python3}" scripts/arm_emulated_check.py --rootfs "$EDGEFACE_ARM_ROOTFS" "$@"
fi
