#!/usr/bin/env bash
# Start a one-machine Ray cluster (and an MLflow server) for vlm-rl, secure by default:
#   * Ray token auth on (RAY_AUTH_MODE=token); the token is generated once into a 0600 file,
#   * the Ray dashboard / Jobs API and MLflow listen on 127.0.0.1 only (SSH-tunnel them for remote use).
# Everything lives in $VLMRL_LOCAL_DIR (default ~/.vlm-rl/local-cluster); stop-local-cluster.sh stops
# exactly this cluster, not other Ray processes of the machine.
#
# Usage: cluster/local/start-local-cluster.sh [--no-mlflow] [extra `ray start` flags, e.g. --num-cpus=8 --num-gpus=1]
# Ports (env): RAY_PORT (6379), DASHBOARD_PORT (8265), MLFLOW_PORT (5000), RAY_CLIENT_PORT (10001).
set -euo pipefail

STATE_DIR="${VLMRL_LOCAL_DIR:-$HOME/.vlm-rl/local-cluster}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-10001}"
START_MLFLOW=1
RAY_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-mlflow) START_MLFLOW=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) RAY_ARGS+=("$arg") ;;
  esac
done

command -v ray >/dev/null || { echo "error: 'ray' not on PATH (activate the venv: . .venv/bin/activate)" >&2; exit 1; }
PYTHON="$(command -v python3 || command -v python)"

umask 077                                   # token, env file, logs: owner only
mkdir -p "$STATE_DIR"
chmod 700 "$STATE_DIR"
TOKEN_FILE="$STATE_DIR/auth_token"
ENV_FILE="$STATE_DIR/env.sh"
RAY_TMP="$STATE_DIR/ray"                    # unique --temp-dir: how the stop script finds our processes

if pgrep -f -- "--temp-dir=$RAY_TMP" >/dev/null 2>&1 || pgrep -f -- "$RAY_TMP/session_" >/dev/null 2>&1; then
  echo "A vlm-rl local cluster is already running (state in $STATE_DIR)." >&2
  echo "Stop it first: bash cluster/local/stop-local-cluster.sh" >&2
  exit 1
fi

if [[ ! -s "$TOKEN_FILE" ]]; then
  "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$TOKEN_FILE"
  echo "Generated a Ray auth token in $TOKEN_FILE"
fi
chmod 600 "$TOKEN_FILE"

export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
export RAY_USAGE_STATS_ENABLED=0
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"

if [[ "$START_MLFLOW" == 1 ]]; then
  command -v mlflow >/dev/null || { echo "error: 'mlflow' not on PATH (or pass --no-mlflow)" >&2; exit 1; }
  mkdir -p "$STATE_DIR/mlflow/artifacts"
  # --app-name vlm-rl: MLflow's server, whose home page -> experiment opens the runs table rather than the
  # GenAI overview (vlm_rl/tracking/mlflow_app.py); registered by `pip install -e .` of this repository.
  MLFLOW_APP=(--app-name vlm-rl)
  if ! "$PYTHON" -c 'import sys; from vlm_rl.tracking.ui_links import app_registered; sys.exit(not app_registered())' 2>/dev/null; then
    echo "warning: the vlm-rl MLflow app is not installed (run 'pip install -e .' again); MLflow's UI will open" >&2
    echo "         experiments on its GenAI overview (the links vlm-rl prints still open the runs table)" >&2
    MLFLOW_APP=()
  fi
  # setsid: its own process group, so the stop script can end the server and its workers together.
  setsid mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" "${MLFLOW_APP[@]+"${MLFLOW_APP[@]}"}" \
    --backend-store-uri "sqlite:///$STATE_DIR/mlflow/mlflow.db" \
    --artifacts-destination "$STATE_DIR/mlflow/artifacts" \
    > "$STATE_DIR/mlflow.log" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/mlflow.pid"
  # Jobs inherit the raylet's environment: every run on this cluster logs to this server.
  export MLFLOW_TRACKING_URI="$MLFLOW_URL"
fi

# The cluster's processes inherit this: Ray Train's placement-group cleaner (and any State API call without an
# address) asks this dashboard instead of autodetecting, which fails with "Found multiple active Ray instances"
# when another Ray runs on the machine (this cluster's --temp-dir is not Ray's default one).
export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"

# setsid: the daemons get their own session, so closing this terminal (or the tool that ran this script)
# does not take the cluster down with it.
setsid -w ray start --head \
  --node-ip-address=127.0.0.1 \
  --port="$RAY_PORT" \
  --ray-client-server-port="$RAY_CLIENT_PORT" \
  --dashboard-host=127.0.0.1 \
  --dashboard-port="$DASHBOARD_PORT" \
  --temp-dir="$RAY_TMP" \
  --disable-usage-stats \
  "${RAY_ARGS[@]+"${RAY_ARGS[@]}"}" > "$STATE_DIR/ray-start.log" 2>&1 \
  || { cat "$STATE_DIR/ray-start.log" >&2; bash "$(dirname "$0")/stop-local-cluster.sh" >/dev/null 2>&1 || true; exit 1; }

# setsid made the Ray daemons a session of their own; remember its id so the stop script can end
# exactly them (the Ray client server, for one, carries no temp-dir on its command line).
first_pid="$(pgrep -f -- "$RAY_TMP" | head -n 1 || true)"
if [[ -n "$first_pid" ]]; then ps -o sid= -p "$first_pid" | tr -d ' ' > "$STATE_DIR/ray.sid"; fi

# `ray job submit` talks to the dashboard's Jobs API; Ray starts without it when the dashboard's own
# dependencies (ray[default]: aiohttp_cors, opencensus, ...) are missing, and every submission is then refused.
if ! "$PYTHON" - "http://127.0.0.1:$DASHBOARD_PORT/api/version" <<'PY'
import sys, time, urllib.error, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:  # it answered (token auth may refuse us): it is up
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
then
  echo "error: Ray's dashboard (the Jobs API 'ray job submit' uses) did not answer on 127.0.0.1:$DASHBOARD_PORT" \
    "within 60 s. Its log:" >&2
  # the newest session's dashboard logs, wherever Ray put its session folder
  for log in $(find "$RAY_TMP" -path '*/logs/dashboard.err' -o -path '*/logs/dashboard.log' 2>/dev/null | sort | tail -n 2); do
    echo "== $log" >&2
    tail -n 15 "$log" >&2 || true
  done
  echo "A missing module above usually means Ray without its dashboard extras: pip install 'ray[default]'" \
    "(pip install -e . installs them). FrontendNotFoundError means a Ray install stripped of" \
    "ray/dashboard/client/build, which the dashboard needs to serve the Jobs API." >&2
  bash "$(dirname "$0")/stop-local-cluster.sh" >/dev/null 2>&1 || true
  exit 1
fi

if [[ "$START_MLFLOW" == 1 ]]; then
  # MLflow takes a few seconds to answer; wait so that the printed URL works right away.
  if ! "$PYTHON" - "$MLFLOW_URL/health" <<'PY'
import sys, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
  then
    echo "warning: MLflow did not answer at $MLFLOW_URL within 60 s; see $STATE_DIR/mlflow.log" >&2
  fi
fi

{
  echo "# Source me: . $ENV_FILE   (client settings for the vlm-rl local Ray cluster)"
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH='$TOKEN_FILE'"
  echo "export VLMRL_RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
  echo "export VLMRL_GCS_ADDRESS=127.0.0.1:$RAY_PORT"
  if [[ "$START_MLFLOW" == 1 ]]; then echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"; fi
} > "$ENV_FILE"
{
  echo "RAY_PORT=$RAY_PORT"
  echo "DASHBOARD_PORT=$DASHBOARD_PORT"
  echo "MLFLOW_PORT=$MLFLOW_PORT"
} > "$STATE_DIR/ports"

cat <<MSG

vlm-rl local Ray cluster is up (token auth on, dashboard and MLflow on 127.0.0.1 only).
  Ray dashboard : http://127.0.0.1:$DASHBOARD_PORT   (asks for the token in $TOKEN_FILE)
MSG
if [[ "$START_MLFLOW" == 1 ]]; then echo "  MLflow UI     : $MLFLOW_URL"; fi
cat <<MSG
  State, logs   : $STATE_DIR

Submit the tiny GRPO run (from the repo root):
  . $ENV_FILE
  ray job submit --address \$VLMRL_RAY_ADDRESS --runtime-env ray_jobs/runtime_env.yaml -- \\
    python -m ray_jobs.grpo --config ray_jobs/configs/recipes/grpo-tiny-cpu.yaml output_dir=\$PWD/outputs/grpo-tiny-cpu

From another machine: ssh -L $DASHBOARD_PORT:127.0.0.1:$DASHBOARD_PORT -L $MLFLOW_PORT:127.0.0.1:$MLFLOW_PORT <this-host>
Stop: bash cluster/local/stop-local-cluster.sh
MSG
