#!/usr/bin/env bash
# Start a real single-node SLURM (Debian slurm-wlm + munge) on this machine, for the SLURM tests.
# Needs root and Debian's package registry; idempotent. No systemd: daemons are started by hand.
# Accounting is off, so the Snakemake profile polls job states with squeue (slurm-status-command).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/{print int($2/1024*0.85)}' /proc/meminfo)   # <= what slurmd detects

[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
chown slurm:slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
conf=$(mktemp)
cat > "$conf" <<CONF
ClusterName=nucleistyle-ci
SlurmctldHost=${host}
SlurmUser=slurm
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=3600
KillWait=5
Waittime=0
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# MinJobAge: finished jobs stay visible to squeue (the profile's status command, and the tests'
# evidence) for an hour, longer than any test run.
if ! cmp -s "$conf" /etc/slurm/slurm.conf; then
  install -m 644 "$conf" /etc/slurm/slurm.conf
  if pgrep -x slurmctld >/dev/null; then scontrol reconfigure; fi   # daemons already up: reload
fi
rm -f "$conf"
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 30); do
  [ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" = idle ] && break
  sleep 1
done
if [ "$(sinfo -h -n "$host" -o %T)" != idle ]; then
  tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
  exit 1
fi
srun -t 1 hostname >/dev/null
echo "SLURM up: $(sinfo -h -o '%P %a %D %T')"
