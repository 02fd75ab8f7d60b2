#!/usr/bin/env bash
# Stop the cluster that start-local-cluster.sh started, and only that one: Ray processes are found by
# their unique --temp-dir ($VLMRL_LOCAL_DIR/ray), MLflow by its recorded process group. `ray stop` is
# not used because it would kill every Ray process of the machine, other users' clusters included.
# The token, the MLflow database and the artifacts are kept (delete $VLMRL_LOCAL_DIR to forget them).
set -uo pipefail

STATE_DIR="${VLMRL_LOCAL_DIR:-$HOME/.vlm-rl/local-cluster}"
RAY_TMP="$STATE_DIR/ray"

# Send SIGTERM, wait up to $2 seconds, then SIGKILL whatever is left. $1: a list of pids.
terminate() {
  local pids="$1" wait_s="$2" left
  [[ -z "$pids" ]] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 $((wait_s * 5))); do
    left=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
    [[ -z "$left" ]] && return 0
    sleep 0.2
  done
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
}

if [[ -s "$STATE_DIR/mlflow.pid" ]]; then
  pid="$(cat "$STATE_DIR/mlflow.pid")"
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q mlflow; then
    group="$(pgrep -g "$pid" | tr '\n' ' ')"
    terminate "$group" 10
    echo "Stopped MLflow (process group $pid)."
  fi
  rm -f "$STATE_DIR/mlflow.pid"
fi

found=0
# The Ray daemons form one session (start-local-cluster.sh ran `setsid ray start`): end it whole,
# unless the recorded id is missing, stale or our own session.
if [[ -s "$STATE_DIR/ray.sid" ]]; then
  sid="$(cat "$STATE_DIR/ray.sid")"
  own_sid="$(ps -o sid= -p $$ | tr -d ' ')"
  if [[ "$sid" =~ ^[0-9]+$ && "$sid" -gt 1 && "$sid" != "$own_sid" ]] \
     && pgrep -s "$sid" -f -- "$RAY_TMP" >/dev/null 2>&1; then
    terminate "$(pgrep -s "$sid" | tr '\n' ' ')" 15
    found=1
  fi
  rm -f "$STATE_DIR/ray.sid"
fi

# Ray's daemons all carry the session folder (or --temp-dir) on their command line; workers die with
# their raylet. Two passes: the first ends the daemons, the second any worker that outlived them.
for _ in 1 2; do
  pids="$(pgrep -f -- "$RAY_TMP" | grep -vx "$$" | tr '\n' ' ')"
  [[ -z "${pids// /}" ]] && break
  found=1
  terminate "$pids" 15
done
if [[ "$found" == 1 ]]; then echo "Stopped the Ray cluster in $RAY_TMP."; else echo "No Ray cluster of $RAY_TMP was running."; fi
exit 0
