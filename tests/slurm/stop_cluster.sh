#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start_cluster.sh STATE_DIR started: cancel its jobs, then stop slurmd,
# slurmctld and munged (each by the pid in its pid file) and wait until they are gone.
set -uo pipefail
STATE=${1:-/var/tmp/anogan-slurm}
export SLURM_CONF="$STATE/slurm.conf"
[ -f "$SLURM_CONF" ] && scancel --full --quiet --user="$(id -un)" 2>/dev/null
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munge/munged.pid"; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
exit 0
