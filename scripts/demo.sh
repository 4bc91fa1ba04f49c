#!/usr/bin/env bash
# The demo: a coordinator on an embedded local Ray trains examples/fashion_mnist.yaml over gRPC,
# shows live progress, downloads the model and checks its test accuracy with plain numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE=state/demo
LOG=$STATE/server.log
mkdir -p "$STATE"

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=${GRADFLEET_PORT:-$(free_port)}
METRICS_PORT=${GRADFLEET_METRICS_PORT:-$(free_port)}
SERVER=127.0.0.1:$PORT

echo "==> starting the coordinator on $SERVER (metrics on http://127.0.0.1:$METRICS_PORT/metrics, log in $LOG)"
"$BIN/gradfleet" serve --port "$PORT" --metrics-port "$METRICS_PORT" --state-dir "$STATE" >"$LOG" 2>&1 &
SERVER_PID=$!
stop_coordinator() {
  trap '' PIPE  # stdout may be a closed pipe (`make demo | head`): the echo must not end the cleanup
  kill "$SERVER_PID" 2>/dev/null || true  # first, so nothing below can leave it running
  wait "$SERVER_PID" 2>/dev/null || true
  echo "==> stopped the coordinator (pid $SERVER_PID)" 2>/dev/null || true
}
trap stop_coordinator EXIT
trap 'exit 141' PIPE  # a write to a closed stdout exits through the EXIT trap instead of killing bash

"$BIN/python" - "$SERVER" <<'PY'
import sys
from service.client import CoordinatorClient
with CoordinatorClient(sys.argv[1]) as client:
    client.wait_ready(timeout=90)
PY

# Submitted and watched in two steps (the job id is needed for the download): each line says what runs.
echo "==> gradfleet submit examples/fashion_mnist.yaml --server $SERVER --output json"
JOB_JSON=$("$BIN/gradfleet" submit examples/fashion_mnist.yaml --server "$SERVER" --output json)
JOB_ID=$(echo "$JOB_JSON" | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "    job $JOB_ID"
echo "==> gradfleet watch $JOB_ID --server $SERVER"
"$BIN/gradfleet" watch "$JOB_ID" --server "$SERVER"

echo "==> gradfleet download $JOB_ID -o $STATE/model.npz --server $SERVER"
"$BIN/gradfleet" download "$JOB_ID" -o "$STATE/model.npz" --server "$SERVER"

echo "==> checking the downloaded model with plain numpy on the 10,000 test images"
DATA_DIR=/usr/share/datasets/fashion-mnist; [ -f "$DATA_DIR/t10k-images-idx3-ubyte.gz" ] || DATA_DIR=data/fashion-mnist
"$BIN/python" examples/predict.py "$STATE/model.npz" "$DATA_DIR"
