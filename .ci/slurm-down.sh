#!/usr/bin/env bash
# Stop the single-node SLURM started by slurm-up.sh (by PID; slurmctld cannot remove its own pid file).
for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
done
sleep 2
rm -f /run/slurmd.pid /run/slurmctld.pid
