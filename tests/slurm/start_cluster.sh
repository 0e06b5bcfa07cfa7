#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests that need a real scheduler (tests/test_slurm.py):
# installs slurm-wlm and munge where missing (Debian, as root), writes a slurm.conf for this host (CPUs and
# memory read from the machine by `slurmd -C`), starts munged, slurmctld and slurmd, and waits until the
# node is idle. Everything it writes is under STATE_DIR; tests/slurm/stop_cluster.sh STATE_DIR stops it.
#
#   tests/slurm/start_cluster.sh [STATE_DIR]      # default /var/tmp/anogan-slurm
#   export SLURM_CONF=STATE_DIR/slurm.conf         # then sinfo, sbatch, hydra/launcher=slurm_cpu ...
#
# Exit status: 0 when the node is idle; 2 when it cannot start here (not root, no apt-get, a daemon that
# does not come up), with the reason on stderr.
set -euo pipefail
STATE=${1:-/var/tmp/anogan-slurm}
fail() { echo "start_cluster.sh: $*" >&2; exit 2; }

case "$STATE" in /*/*) ;; *) fail "STATE_DIR must be an absolute path below a directory, e.g. /var/tmp/anogan-slurm (it is emptied)" ;; esac
[ "$(id -u)" = 0 ] || fail "needs root (it installs packages and starts daemons as root); run it with sudo"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >"$STATE.apt.log" 2>&1 \
    || fail "apt-get install slurm-wlm munge failed; see $STATE.apt.log"
fi
if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
  fail "a cluster of $STATE is running already; stop it with tests/slurm/stop_cluster.sh $STATE"
fi
rm -rf "$STATE"
mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/munge"
chmod 700 "$STATE/munge"

# munge: a key of our own, made on the spot, and a socket of our own (a system munged may run already)
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
SOCKET="$STATE/munge/munge.socket"
munged --force --key-file="$STATE/munge/munge.key" --socket="$SOCKET" --pid-file="$STATE/munge/munged.pid" \
  --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed" \
  || fail "munged did not start; see $STATE/munge/munged.log"

HOST=$(hostname -s)
NODE=$(slurmd -C | head -1 | sed -E "s/^NodeName=[^ ]+ //; s/ UpTime=.*//")  # CPUs=.. RealMemory=.. of this machine
cat >"$STATE/slurm.conf" <<CONF
# written by tests/slurm/start_cluster.sh: a one-node test cluster, every daemon as root
ClusterName=anogan-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ReturnToService=2
JobRequeue=1
# quick tests: a requeued job may start again after cred_expire (10 s, above); kill 5 s after SIGTERM, schedule every few seconds, forget finished jobs after 10 min
KillWait=5
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 $NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$STATE/slurm.conf"
slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start; see $STATE/slurmctld.log"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start; see $STATE/slurmd.log"
for _ in $(seq 120); do
  if [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
fail "the node is not idle after 60 s ($(sinfo -h -N -o '%t %E' 2>&1)); see $STATE/slurmctld.log and $STATE/slurmd.log"
