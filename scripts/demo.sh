#!/usr/bin/env bash
# The README's main command: on a fresh machine, bring up the local Kubernetes control plane with
# simulated GPU pools, run the operator, apply one example DedicatedEndpoint per pool family
# (Ampere, Hopper, GB10) and show them reaching Ready.
#
# The operator keeps running in the background after the script ends (so you can `kubectl scale`,
# edit or delete the endpoints and watch it react); its log is .cache/demo/operator.log. It stops
# by itself when the cluster goes away: `.venv/bin/dedicated cluster down` leaves nothing behind.
# Re-running the script is safe: the cluster and the objects are reused, the operator restarted.
#
# Environment: DEMO_TIMEOUT (seconds to wait for Ready, default 300).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
timeout_s=${DEMO_TIMEOUT:-300}
demo_dir="$root/.cache/demo"
mkdir -p "$demo_dir"
say() { printf '\n[demo] %s\n' "$*"; }

say "1/6 Python environment"
bash scripts/bootstrap-venv.sh
dedicated=(.venv/bin/dedicated)

say "2/6 local Kubernetes control plane with simulated GPU node pools"
"${dedicated[@]}" cluster up
eval "$("${dedicated[@]}" cluster env)"
state_dir=$(dirname "$KUBECONFIG")

say "3/6 CustomResourceDefinitions"
kubectl apply --server-side --force-conflicts -f crds/
kubectl wait --for=condition=Established --timeout=60s \
  crd/dedicatedendpoints.llm.dedicated.dev crd/quantizedmodels.llm.dedicated.dev

say "4/6 the operator (background; log: .cache/demo/operator.log)"
pid_file="$demo_dir/operator.pid"
if [ -f "$pid_file" ]; then
  old=$(cat "$pid_file")
  if kill -0 "$old" 2>/dev/null && grep -q "dedicated.operator.runtime" "/proc/$old/cmdline" 2>/dev/null; then
    echo "stopping the operator of an earlier demo run (pid $old)"
    kill "$old"
    for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$pid_file"
fi
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nohup .venv/bin/python -m dedicated.operator.runtime --kubeconfig "$KUBECONFIG" \
  --pools dedicated/localcluster/gpu-pools.yaml --standalone \
  --liveness "http://127.0.0.1:$port/healthz" >"$demo_dir/operator.log" 2>&1 </dev/null &
op_pid=$!
echo "$op_pid" >"$pid_file"
# Stop the operator when the cluster's API server goes away (after `dedicated cluster down`).
api_pid=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$state_dir/run/kube-apiserver.pid")
nohup bash -c "while kill -0 $api_pid 2>/dev/null && kill -0 $op_pid 2>/dev/null; do sleep 3; done; kill $op_pid 2>/dev/null" \
  >/dev/null 2>&1 </dev/null &
for _ in $(seq 120); do
  if ! kill -0 "$op_pid" 2>/dev/null; then
    echo "the operator exited during startup; its log:" >&2
    tail -n 40 "$demo_dir/operator.log" >&2
    exit 1
  fi
  if .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
      "http://127.0.0.1:$port/healthz" 2>/dev/null; then
    break
  fi
  sleep 0.5
done
echo "operator running (pid $op_pid), liveness http://127.0.0.1:$port/healthz"

say "5/6 example endpoints: Ampere, Hopper and GB10 (plus the model volume and model facts they use)"
kubectl apply -f examples/models-volume.yaml -f examples/model-facts/ \
  -f examples/endpoint-ampere.yaml -f examples/endpoint-hopper.yaml -f examples/endpoint-gb10.yaml
endpoints=(qwen36-gsq-ampere qwen36-autoround-hopper qwen36-bf16-gb10)
deadline=$(( $(date +%s) + timeout_s ))
while true; do
  not_ready=()
  for ep in "${endpoints[@]}"; do
    phase=$(kubectl get dedicatedendpoint "$ep" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    [ "$phase" = "Ready" ] || not_ready+=("$ep:${phase:-none}")
  done
  [ ${#not_ready[@]} -eq 0 ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "[demo] not Ready after ${timeout_s}s: ${not_ready[*]}" >&2
    kubectl get dedicatedendpoints -o wide >&2 || true
    for item in "${not_ready[@]}"; do
      kubectl get dedicatedendpoint "${item%%:*}" \
        -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
    done
    echo "operator log (last lines, full log: .cache/demo/operator.log):" >&2
    tail -n 30 "$demo_dir/operator.log" >&2
    exit 1
  fi
  sleep 2
done

say "6/6 result"
kubectl get dedicatedendpoints -o wide
echo
kubectl get nodes -L dedicated.dev/pool,nvidia.com/gpu.product,nvidia.com/gpu.family,nvidia.com/gpu.count,nvidia.com/gpu.memory
cat <<EOF

[demo] All example endpoints are Ready. The operator keeps running (pid $op_pid, log .cache/demo/operator.log).
[demo] Try:   eval "\$(.venv/bin/dedicated cluster env)"
[demo]        kubectl describe dedicatedendpoint qwen36-gsq-ampere
[demo]        kubectl scale dedicatedendpoint qwen36-autoround-hopper --replicas=3
[demo] Stop:  .venv/bin/dedicated cluster down      (the operator stops with it)
EOF
