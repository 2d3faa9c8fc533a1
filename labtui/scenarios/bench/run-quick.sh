#!/bin/sh
# The policy benchmark suite, quick variant, and its report (docs/report-policies-quick).
# Run from the repository root: sh scenarios/bench/run-quick.sh [BUNDLES_DIR]
# Every scenarios/bench/*.toml with --quick (ollama, llamacpp-router, static-split and
# planner, 3-4 repetitions each, interleaved), then the pipelined-resume benchmark on sim
# and under the study's profile (study-a6000), then `labtui report`; the resume table
# is appended to the report. About 15 minutes on the project's 2-core VM (911 s, 2026-12-03).
set -e
out=${1:-runs/bench-quick}
start=$(date +%s)
for f in scenarios/bench/*.toml; do
  python -m labtui run "$f" --quick --out "$out/$(basename "$f" .toml)"
done
python -m labtui.engine.policies.resume_bench --profiles sim,study-a6000 --out "$out/resume.md"
python -m labtui report "$out"/*/ --out docs/report-policies-quick
{ printf '\n## Pipelined resume\n\n'; cat "$out/resume.md"; } >> docs/report-policies-quick/report.md
echo "run-quick: suite, resume benchmark and report in $(( $(date +%s) - start )) s"
