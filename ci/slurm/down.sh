#!/usr/bin/env bash
# Stop the cluster ci/slurm/up.sh started: exactly the daemons whose pid files live under
# $SLURM_PREFIX (each pid checked against /proc/PID/comm first), and remove the
# /etc/slurm/slurm.conf symlink only if it is ours. Safe to run when nothing is up.
set -uo pipefail
P=${SLURM_PREFIX:-/tmp/replisynth-slurm}
for d in slurmd slurmctld munged; do
  f=$P/run/$d.pid
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$d" ]; then
    kill "$pid" 2>/dev/null
    end=$((SECONDS + 15))
    while [ -d "/proc/$pid" ] && [ $SECONDS -lt $end ]; do sleep 0.2; done
    if [ -d "/proc/$pid" ]; then kill -9 "$pid" 2>/dev/null; fi
    echo "slurm-down: stopped $d (pid $pid)" >&2
  fi
  rm -f "$f"
done
if [ -s "$P/run/etc-symlink" ]; then
  link=$(cat "$P/run/etc-symlink")
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$P/etc/slurm.conf" ]; then rm -f "$link"; fi
  rm -f "$P/run/etc-symlink"
fi
exit 0
