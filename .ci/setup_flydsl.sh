#!/usr/bin/env bash
# Set up compile-only FlyDSL (AMD gfx942/gfx950 kernels lowered on a CPU machine) for CI and developers.
#
#   bash .ci/setup_flydsl.sh            # idempotent; a few seconds once the packages are there
#   eval "$(bash .ci/setup_flydsl.sh --print-env)"   # only print the export line
#
# What it does:
#   1. apt-get install lld-19 (an AMDGPU-capable ld.lld) and rocm-device-libs (ROCm device bitcode),
#      skipped when they are already installed, and never fatal when apt is unavailable;
#   2. pip install flydsl==0.4.2 (skipped when that version is importable);
#   3. a scratch ROCM_PATH ($INDUCTOR_MOE_ROCM_PATH or ~/.cache/inductor_moe_rocm) holding
#      llvm/bin/ld.lld -> /usr/bin/ld.lld-19 and amdgcn/bitcode -> Debian's bitcode folder;
#   4. writes "export ROCM_PATH=..." to $ROCM_PATH_ROOT/env.sh, which the FlyDSL tests read, and prints it.
#
# The tests under tests/kernels/flydsl/ skip with a reason when any piece is missing, so a failure here
# only costs coverage. The script always exits 0.
set -u

FLYDSL_VERSION="${FLYDSL_VERSION:-0.4.2}"
ROCM_ROOT="${INDUCTOR_MOE_ROCM_PATH:-${HOME:-/root}/.cache/inductor_moe_rocm}"
PY="${PYTHON:-python}"

if [ "${1:-}" = "--print-env" ]; then
    echo "export ROCM_PATH=${ROCM_ROOT}"
    exit 0
fi

log() { echo "[setup_flydsl] $*" >&2; }

# -- 1. system packages -------------------------------------------------------------------------------
find_lld() {
    for c in /usr/bin/ld.lld-19 /usr/lib/llvm-19/bin/ld.lld; do
        [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}
find_bitcode() {
    for c in /usr/lib/x86_64-linux-gnu/amdgcn/bitcode /usr/lib/aarch64-linux-gnu/amdgcn/bitcode \
             /usr/lib/amdgcn/bitcode /opt/rocm/amdgcn/bitcode; do
        [ -f "$c/ockl.bc" ] && { echo "$c"; return 0; }
    done
    return 1
}

need=()
find_lld >/dev/null || need+=(lld-19)
find_bitcode >/dev/null || need+=(rocm-device-libs)
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
        log "apt-get install ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # the package lists may be missing or stale on a fresh machine: update once, then install
        if ! timeout 300 $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/setup_flydsl_apt.log 2>&1; then
            timeout 300 $SUDO apt-get update -q >>/tmp/setup_flydsl_apt.log 2>&1 || true
            timeout 300 $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/setup_flydsl_apt.log 2>&1 \
                || log "WARNING: apt-get install ${need[*]} failed (see /tmp/setup_flydsl_apt.log); FlyDSL compile tests will skip"
        fi
    else
        log "WARNING: no apt-get; install an ld.lld with AMDGPU support (lld-19) and rocm-device-libs by hand"
    fi
fi

# -- 2. the FlyDSL wheel --------------------------------------------------------------------------------
have_flydsl=$("$PY" -c "import importlib.metadata as m; print(m.version('flydsl'))" 2>/dev/null || true)
if [ "$have_flydsl" != "$FLYDSL_VERSION" ]; then
    log "pip install flydsl==${FLYDSL_VERSION}"
    timeout 600 "$PY" -m pip install -q "flydsl==${FLYDSL_VERSION}" >/tmp/setup_flydsl_pip.log 2>&1 \
        || log "WARNING: pip install flydsl==${FLYDSL_VERSION} failed (see /tmp/setup_flydsl_pip.log); FlyDSL tests will skip"
fi

# -- 3. scratch ROCM_PATH --------------------------------------------------------------------------------
mkdir -p "$ROCM_ROOT/llvm/bin" "$ROCM_ROOT/amdgcn" 2>/dev/null || log "WARNING: cannot create $ROCM_ROOT"
if lld=$(find_lld); then
    ln -sfn "$lld" "$ROCM_ROOT/llvm/bin/ld.lld"
else
    log "WARNING: no ld.lld-19 found; FlyDSL compile tests will skip"
fi
if bc=$(find_bitcode); then
    ln -sfn "$bc" "$ROCM_ROOT/amdgcn/bitcode"
else
    log "note: no ROCm device bitcode found (only kernels that call device-library functions need it)"
fi

# -- 4. the export line -----------------------------------------------------------------------------------
echo "export ROCM_PATH=${ROCM_ROOT}" >"$ROCM_ROOT/env.sh" 2>/dev/null || true
echo "export ROCM_PATH=${ROCM_ROOT}"
exit 0
