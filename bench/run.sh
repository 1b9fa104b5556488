#!/usr/bin/env bash
# bench/run.sh BUILD_DIR [names...]: runs each benchmark (or the named ones); rows go
# to BUILD_DIR/bench-rows.tsv for bench/report.py.
set -euo pipefail
build=$1
shift
rows=$build/bench-rows.tsv
: >"$rows"
export COPROC_BENCH_ROWS=$(realpath "$rows")
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for src in "$(dirname "$0")"/bench_*.cpp; do names+=("$(basename "$src" .cpp)"); done
fi
for name in "${names[@]}"; do
  echo
  echo "=== $name"
  "$build/bench/$name"
done
