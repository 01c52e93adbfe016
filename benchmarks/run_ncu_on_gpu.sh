#!/usr/bin/env bash
# Nsight Compute reports of ours and Humming's MoE GEMM at a few shapes (profile_moe_ncu.py), on
# the lent GPU machine (set-up: gpu_env.sh). Clocks are left alone (--clock-control none).
# Usage: [NCU_ARGS=...] [PROFILE_ARGS=...] bash benchmarks/run_ncu_on_gpu.sh OUT_DIR [BITS:KIND:TOKENS,TOKENS ...]
set -euo pipefail
out=${1:?usage: run_ncu_on_gpu.sh OUT_DIR [BITS:KIND:TOKENS,... ...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
source "$root/benchmarks/gpu_env.sh"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(4:gate_up:8,128 2:gate_up:8,128)
sections=(SpeedOfLight WarpStateStats Occupancy SchedulerStats LaunchStats MemoryWorkloadAnalysis ComputeWorkloadAnalysis
          SourceCounters)
for c in "${cases[@]}"; do
    IFS=: read -r bits kind tokens <<< "$c"
    name="ncu_${bits}bit_${kind}_${tokens//,/_}"
    ncu --profile-from-start off --clock-control none --print-details all ${sections[@]/#/--section } \
        ${NCU_ARGS:-} \
        python3 "$root/benchmarks/profile_moe_ncu.py" --bits "$bits" --kind "$kind" --tokens ${tokens//,/ } ${PROFILE_ARGS:-} \
        > "$out/$name.txt" 2> "$out/$name.err" || echo "[ncu] $c failed (see $name.err)"
    echo "[ncu] $c: $(grep -c 'Section: GPU Speed Of Light' "$out/$name.txt" || true) kernels profiled"
done
