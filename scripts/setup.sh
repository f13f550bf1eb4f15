#!/usr/bin/env bash
# Create ./.venv with hivemind, the three offline local models, the offline embedder and the
# test tools. Safe to re-run: a venv built for the same dependency files is reused.
#
#   HIVEMIND_VENV_CACHE=DIR  keep built venvs under DIR keyed by a hash of the dependency files
#                           (CI sets it); without it the venv is built in place at ./.venv.
#   --test                  also install what the test suite needs outside PyPI (Debian's
#                           chromium, to render the HTML report headless), when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (headless report rendering in the tests)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found; the report-rendering test will be skipped" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
deps_hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

build_venv() {
  local target=$1
  rm -rf "$target"
  "$PYTHON" -m venv "$target"
  "$target/bin/pip" install --quiet --upgrade pip
  # The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
  "$target/bin/pip" install --quiet "torch==2.13.0"
  # llama-cpp-python compiles from source (about 6 minutes on 2 cores; pip caches the wheel).
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$target/bin/pip" install --quiet -e ".[local,test]"
  echo "$deps_hash" > "$target/.hivemind-deps"
}

if [ -n "${HIVEMIND_VENV_CACHE:-}" ]; then
  cached="$HIVEMIND_VENV_CACHE/venv-$deps_hash"
  if [ ! -f "$cached/.hivemind-deps" ]; then
    echo "building the environment (first time for these dependencies)..."
    build_venv "$cached"
  fi
  rm -rf .venv && ln -s "$cached" .venv
  # Point the cached venv's editable install at this checkout.
  .venv/bin/pip install --quiet --no-deps -e .
elif [ ! -f .venv/.hivemind-deps ] || [ "$(cat .venv/.hivemind-deps)" != "$deps_hash" ]; then
  echo "building ./.venv ..."
  build_venv .venv
fi
echo "environment ready: $(.venv/bin/python --version), hivemind at $(pwd)"
