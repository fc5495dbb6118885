#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the cluster test (tests/cluster/test_slurm.py).
#
#   tests/cluster/cluster.sh start   # install (Debian), configure, start munged/slurmctld/slurmd
#   tests/cluster/cluster.sh stop    # stop exactly the daemons `start` started (by PID)
#   tests/cluster/cluster.sh status  # sinfo / squeue
#
# Needs root and Debian 12 packages (slurmctld slurmd slurm-client munge, SLURM 22.05).
# The node advertises one GPU to the scheduler (gres.conf `File=/dev/null`), so
# `--gpus=1` jobs are scheduled one at a time exactly as on a one-GPU node; nothing
# pretends CUDA exists: jobs still run on the CPU.
#
# The config must sit at the compiled default /etc/slurm/slurm.conf: the executor's
# job step strips SLURM_* variables (SLURM_CONF included) before `srun`. An existing
# slurm.conf that this script did not write is never overwritten.
#
# Every wait is bounded; a daemon that does not come up fails `start` with its log.
set -euo pipefail

STATE=${ADVCAM_SLURM_STATE:-/var/tmp/advcam-slurm}
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MARK="# written by advcam tests/cluster/cluster.sh"
PARTITION=${ADVCAM_SLURM_PARTITION:-gpu}
WAIT_S=${ADVCAM_SLURM_WAIT_S:-30}

log() { echo "[cluster] $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - t0 >= limit )); then
      log "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.5
  done
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 600 apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  for f in "$CONF" "$GRES"; do
    if [[ -e $f ]] && ! grep -qF "$MARK" "$f"; then
      log "$f exists and was not written by this script; refusing to overwrite it"
      exit 1
    fi
  done
  mkdir -p /etc/slurm "$STATE"/{ctld,spool,log}
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  # Leave 1 GiB to the OS; jobs ask for memory explicitly (mem_mb).
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  cat >"$CONF" <<EOF
$MARK
ClusterName=advcam
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
GresTypes=gpu
# squeue is the status command (no slurmdbd here): finished jobs stay visible for
# MinJobAge s, which must be >= 3 x the executor's --slurm-init-seconds-before-status-checks.
# An hour also keeps every job of a test run in \`scontrol show job\`, where the test reads
# which jobs were allocated the GPU (JOB_GRES / TresPerJob).
MinJobAge=3600
AccountingStorageType=accounting_storage/none
# One line per finished job (state, times, node), kept for debugging a failed test run.
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$GRES" <<EOF
$MARK
# A scheduling-only GPU: slurmd drops a count-only GRES without File= (node INVAL).
Name=gpu File=/dev/null
EOF
}

start_munge() {
  if [[ -f $STATE/munged.pid ]] && kill -0 "$(cat "$STATE/munged.pid")" 2>/dev/null; then
    return
  fi
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create 2>/dev/null \
    || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/advcam-munged.pid
  wait_for "$WAIT_S" "munged pid file" test -s /run/munge/advcam-munged.pid
  cp /run/munge/advcam-munged.pid "$STATE/munged.pid"
  wait_for "$WAIT_S" "munge round trip" bash -c 'munge -n | unmunge'
}

start_slurm() {
  # A cluster this script started earlier is stopped first (its PID files), never a foreign one.
  stop_pid slurmd "$STATE/slurmd.pid"
  stop_pid slurmctld "$STATE/slurmctld.pid"
  slurmctld -c -i  # a fresh test cluster: clear (-c) any state of an earlier run
  wait_for "$WAIT_S" "slurmctld pid file" test -s "$STATE/slurmctld.pid" \
    || { tail -20 "$STATE/log/slurmctld.log" >&2; return 1; }
  wait_for "$WAIT_S" "slurmctld answers" scontrol ping \
    || { tail -20 "$STATE/log/slurmctld.log" >&2; return 1; }
  slurmd
  wait_for "$WAIT_S" "slurmd pid file" test -s "$STATE/slurmd.pid" \
    || { tail -20 "$STATE/log/slurmd.log" >&2; return 1; }
  local host; host=$(hostname -s)
  if ! wait_for "$WAIT_S" "node $host idle" \
      bash -c "sinfo -h -n $host -o %t | grep -qx idle"; then
    sinfo -N -l >&2 || true
    tail -20 "$STATE/log/slurmd.log" >&2
    return 1
  fi
  log "up: partition $PARTITION, node $host ($(sinfo -h -o '%c CPUs, %m MB, %G'))"
}

stop_pid() {  # stop_pid NAME PIDFILE
  local name=$1 file=$2 pid
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    if ! wait_for 15 "$name ($pid) to exit" bash -c "! kill -0 $pid"; then
      log "killing $name ($pid)"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

stop_all() {
  # Jobs first, so no step outlives the daemons.
  timeout 20 scancel --user=root >/dev/null 2>&1 || true
  stop_pid slurmd "$STATE/slurmd.pid"
  stop_pid slurmctld "$STATE/slurmctld.pid"
  stop_pid munged "$STATE/munged.pid"
  log "stopped"
}

case ${1:-} in
  start)
    [[ $(id -u) == 0 ]] || { log "needs root"; exit 1; }
    install_packages
    write_config
    start_munge
    start_slurm || { stop_all; exit 1; }
    ;;
  stop) stop_all ;;
  status) sinfo -N -l; squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
