# Sourced by test.sh and bench.sh: installs what is missing and prepares the venv under target/.
# Sets REPO, HERE, VENV, PY and exports MS_AUTH_TARGET_DIR.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export MS_AUTH_TARGET_DIR="${MS_AUTH_TARGET_DIR:-$REPO/target/release}"
VENV="$REPO/target/py-venv"
PY="$VENV/bin/python"

if [ ! -f "$MS_AUTH_TARGET_DIR/libms_auth.so" ]; then
    echo "bindings/python: $MS_AUTH_TARGET_DIR/libms_auth.so not found; run 'cargo build --release' first" \
         "(or set MS_AUTH_TARGET_DIR)" >&2
    exit 1
fi
MS_AUTH_TARGET_DIR="$(cd "$MS_AUTH_TARGET_DIR" && pwd)"  # absolute: the tests run from elsewhere

# System packages, installed only when missing: python3 with venv/ensurepip, and a C compiler
# (the loader tests build small fake libraries to prove the ABI check).
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if [ "${#need[@]}" -gt 0 ]; then
    echo "bindings/python: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$PY" ] || ! "$PY" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
"$PY" -m pip install -q --disable-pip-version-check -r "$HERE/requirements-test.txt"
# Reinstalled every time so that the tests run against the package as pip installs it; setuptools
# builds in-tree and would carry stale files (an old bundled library) over from build/.
rm -rf "$HERE/build" "$HERE/src/ms_auth.egg-info"
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$HERE"
