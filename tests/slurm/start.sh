#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying `clo grid run --executor slurm` without a real cluster
# (tests/test_slurm.py uses it). Needs root and Debian's packages: apt-get install -y slurm-wlm munge.
#   tests/slurm/start.sh [DIR]      # state, logs and slurm.conf in DIR (default /tmp/clo-slurm); prints the
#                                   # SLURM_CONF line to export
#   tests/slurm/start.sh --stop [DIR]
# What this container allows: no cgroups, so processes are tracked by their parent pid (proctrack/linuxproc) and
# tasks are not bound (task/none); no accounting daemon (slurmdbd needs a database), so `sacct` has nothing to show
# and finished jobs are read with `scontrol show job` while SLURM keeps them (MinJobAge).
set -euo pipefail
if [[ "${1:-}" == "--stop" ]]; then
  DIR="${2:-/tmp/clo-slurm}"
  for pid in "$DIR"/slurmd.pid "$DIR"/slurmctld.pid; do [[ -f "$pid" ]] && kill "$(cat "$pid")" 2>/dev/null || true; done
  pkill -9 -x slurmstepd 2>/dev/null || true  # a cancelled job's step can outlive its daemons
  exit 0
fi
DIR="${1:-/tmp/clo-slurm}"
for tool in munged slurmctld slurmd; do
  command -v "$tool" >/dev/null || { echo "start.sh: $tool is missing; apt-get install -y slurm-wlm munge" >&2; exit 2; }
done
mkdir -p "$DIR/state" "$DIR/spool" /etc/munge /run/munge /var/log/munge /var/lib/munge
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))"
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chmod 400 /etc/munge/munge.key
fi
if ! pgrep -x munged >/dev/null; then
  munged --force
fi
cat > "$DIR/slurm.conf" <<CONF
ClusterName=clo
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$DIR/slurm.conf"
slurmctld -c -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 30); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mixed|allocated"; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "start.sh: the node did not come up in 30 s; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
exit 1
