#!/bin/sh
# The policy benchmark suite, quick variant, and its report (docs/report-policies-quick).
# Run from the repository root: sh scenarios/bench/run-quick.sh
set -e
out=${1:-runs/bench-quick}
for f in scenarios/bench/*.toml; do
  python -m labtui run "$f" --quick --out "$out/$(basename "$f" .toml)"
done
python -m labtui report "$out"/* --out docs/report-policies-quick
