#!/usr/bin/env bash
# A fresh machine, as near as this one can be: a clean clone of HEAD in a new directory, an empty
# pip cache and new HOME, then the README's first set-up (the core, no extras). Prints the times.
#
#   bash bench/fresh_install.sh           time `bash scripts/setup.sh` (torch's CPU build, then
#                                         `pip install -e .`); check nothing was compiled,
#                                         `hivemind --help` works and a llamacpp deployment is
#                                         refused with the install line
#   bash bench/fresh_install.sh --first   then the README's first command verbatim (set-up and the
#                                         NoveltyBench study), timed as a whole
#
# Packages come from the registries (PyPI), none from this machine's caches; torch==2.13.0 is the
# file this machine's pip serves (see the README's set-up).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
mkdir -p "$work/home" "$work/pip-cache"
export HOME="$work/home" PIP_CACHE_DIR="$work/pip-cache" PIP_NO_INPUT=1
unset HIVEMIND_VENV_CACHE
cd "$work/clone"
first_command=$(grep -m1 '^bash scripts/setup.sh && ' README.md)

now() { date +%s.%N; }
t0=$(now)
bash scripts/setup.sh 2>&1 | tee "$work/setup.log" | tail -1
t1=$(now)
printf 'core set-up (fresh venv, empty pip cache): %.0f s\n' "$(echo "$t1 - $t0" | bc)"
printf 'venv size: %s\n' "$(du -sh .venv | cut -f1)"
if .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "FAIL: llama_cpp is installed by the core"; exit 1
fi
echo "compiled nothing: llama_cpp not installed; $(.venv/bin/pip list 2>/dev/null | wc -l) packages"
.venv/bin/hivemind --help >/dev/null && echo "hivemind --help: ok"
cat > "$work/zoo.yaml" <<'EOF'
deployments:
  - {name: tiny, provider: llamacpp, model: x.gguf}
EOF
printf 'name: s\nquery_set: open-ended-v1\nzoo: %s\ndeployments: [tiny]\nsamples: 1\nmax_queries: 1\n' "$work/zoo.yaml" > "$work/spec.yaml"
refused=$(.venv/bin/hivemind run "$work/spec.yaml" --store "$work/st" 2>&1 || true)
echo "llamacpp deployment: $refused"
echo "$refused" | grep -q "pip install 'hivemind-study\[local\]'" || { echo "FAIL: no install line"; exit 1; }

if [ "${1:-}" = "--first" ]; then
  rm -rf .venv "$work/pip-cache" && mkdir -p "$work/pip-cache"
  echo "README's first command: $first_command"
  t0=$(now)
  bash -c "$first_command" > "$work/first.log" 2>&1 || { tail -20 "$work/first.log"; exit 1; }
  t1=$(now)
  tail -4 "$work/first.log"
  printf "README's first command from a fresh clone and empty pip cache: %.0f s\n" "$(echo "$t1 - $t0" | bc)"
fi
