#!/usr/bin/env bash
# Runs NPROC processes of one command on this machine, each with its own CPU devices, wired
# together through JAX's distributed runtime: a multi-host rehearsal on one box.
#
#   launch/local.sh NPROC DEVICES_PER_PROCESS CMD [ARGS...]
#   launch/local.sh 2 4 python -m mpjax.main --config=configs/mp2.py:demo --workdir=/tmp/mp2_2x4
#
# Process i runs CMD with
#   JAX_PLATFORMS=cpu
#   XLA_FLAGS="<your XLA_FLAGS> --xla_force_host_platform_device_count=DEVICES_PER_PROCESS"
#   MPJAX_COORDINATOR_ADDRESS=localhost:PORT  MPJAX_NUM_PROCESSES=NPROC  MPJAX_PROCESS_ID=i
# and mpjax.main calls jax.distributed.initialize() with them (process 0 hosts the coordinator).
#
# Output: process 0 to this terminal (its stdout to stdout, its stderr to stderr); every process,
# 0 included, to LOG_DIR/rank<i>.log (appended to, after a header line).
# Exit: 0 when every process exits 0. When one fails, the others are stopped at once (SIGTERM,
# then SIGKILL after MPJAX_KILL_GRACE seconds: a survivor would wait in a collective) and the
# script exits with the failed process's status. Ctrl-C (SIGINT), SIGTERM and SIGHUP are
# forwarded to every process as SIGTERM (mpjax saves a checkpoint and exits 0); a second Ctrl-C
# kills them. After Ctrl-C the script exits 130, after SIGTERM/SIGHUP with the processes' status.
# Rerun the same command (same --workdir) to resume, with any NPROC / DEVICES_PER_PROCESS.
#
# Environment:
#   MPJAX_PORT        coordinator port (default: a free one picked with python3)
#   MPJAX_LOG_DIR     per-process logs (default: ./logs/local-YYYYmmdd-HHMMSS)
#   MPJAX_KILL_GRACE  seconds between SIGTERM and SIGKILL when a process failed (default 10)
# Needs bash >= 4.3 (5.1+ reacts to a failure at once; older versions poll twice a second).
set -euo pipefail

prog=${0##*/}

usage() {
  cat >&2 <<USAGE
usage: $prog NPROC DEVICES_PER_PROCESS CMD [ARGS...]
  Runs NPROC copies of CMD on this machine, each with DEVICES_PER_PROCESS CPU devices, as one
  multi-process JAX job (MPJAX_COORDINATOR_ADDRESS / MPJAX_NUM_PROCESSES / MPJAX_PROCESS_ID).
example:
  $prog 2 4 python -m mpjax.main --config=configs/mp2.py:demo --workdir=/tmp/mp2_2x4
environment: MPJAX_PORT, MPJAX_LOG_DIR, MPJAX_KILL_GRACE (see the header of this script)
USAGE
  exit 2
}

die() { echo "$prog: $*" >&2; exit 2; }
note() { echo "$prog: $*" >&2; }

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3))); then
  die "needs bash >= 4.3 (this is $BASH_VERSION)"
fi
[[ ${1:-} == -h || ${1:-} == --help ]] && usage
(($# >= 3)) || usage
nproc=$1
ndev=$2
shift 2
[[ $nproc =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive integer, got '$nproc'"
[[ $ndev =~ ^[1-9][0-9]*$ ]] || die "DEVICES_PER_PROCESS must be a positive integer, got '$ndev'"
command -v -- "$1" >/dev/null 2>&1 || die "command not found: $1"
grace=${MPJAX_KILL_GRACE:-10}
[[ $grace =~ ^[0-9]+$ ]] || die "MPJAX_KILL_GRACE must be a whole number of seconds, got '$grace'"

# Coordinator port: MPJAX_PORT, or one the kernel reports free (there is a short window in which
# another program could take it; set MPJAX_PORT if that ever bites).
pick_port() {
  local py
  for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1; then
      "$py" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()'
      return
    fi
  done
  die "no python3 on PATH to pick a free port; set MPJAX_PORT"
}
port=${MPJAX_PORT:-$(pick_port)}
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "bad port '$port'"; fi

# XLA_FLAGS: keep the caller's flags, replace any host device count with ours.
read -r -a given_flags <<<"${XLA_FLAGS:-}"
xla_flags=()
for f in ${given_flags[@]+"${given_flags[@]}"}; do
  [[ $f == --xla_force_host_platform_device_count=* ]] || xla_flags+=("$f")
done
xla_flags+=("--xla_force_host_platform_device_count=$ndev")

export JAX_PLATFORMS=cpu
export XLA_FLAGS="${xla_flags[*]}"
export MPJAX_COORDINATOR_ADDRESS="localhost:$port"
export MPJAX_NUM_PROCESSES=$nproc
export PYTHONUNBUFFERED=1  # logs appear as they are written, not per 8 KiB block

log_dir=${MPJAX_LOG_DIR:-./logs/local-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$log_dir"

# Every process gets its own process group (job control on while they start), so that a signal
# reaches the processes it spawns too (e.g. Grain workers), and Ctrl-C at the terminal reaches
# only this script, which decides what to forward.

pids=()       # pids[i] = pid (= process group id) of process i
tee_pids=()
tee_opts=(-a)
# GNU tee -p: keep writing the log when the terminal side of the pipe goes away.
if tee -p -a /dev/null </dev/null >/dev/null 2>&1; then tee_opts=(-p -a); fi

printf -v cmd_line '%q ' "$@"
set -m
for ((i = 0; i < nproc; i++)); do
  log="$log_dir/rank$i.log"
  printf '=== %s  %s: process %d of %d, %d CPU devices, coordinator %s: %s\n' \
    "$(date '+%F %T')" "$prog" "$i" "$nproc" "$ndev" "$MPJAX_COORDINATOR_ADDRESS" "$cmd_line" >>"$log"
  if ((i == 0)); then
    # Two tees (stdout, stderr) that ignore Ctrl-C, so that they outlive the interrupt and
    # show process 0's last words (the checkpoint it saves).
    exec {out_fd}> >(trap '' INT TERM HUP; exec tee "${tee_opts[@]}" "$log")
    tee_pids+=($!)
    exec {err_fd}> >(trap '' INT TERM HUP; exec tee "${tee_opts[@]}" "$log" >&2)
    tee_pids+=($!)
    MPJAX_PROCESS_ID=$i "$@" </dev/null 1>&"$out_fd" 2>&"$err_fd" &
    pids+=($!)
    exec {out_fd}>&- {err_fd}>&-  # process 0 holds the only write ends: the tees end with it
  else
    MPJAX_PROCESS_ID=$i "$@" </dev/null >>"$log" 2>&1 &
    pids+=($!)
  fi
done
set +m  # no job notices ("Terminated") from here on
note "$nproc processes x $ndev CPU devices, coordinator $MPJAX_COORDINATOR_ADDRESS, logs in $log_dir"

# signal_all SIG: send SIG to every process group that still has a member.
signal_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill "-$1" -- "-$pid" 2>/dev/null || true
  done
}
# kill_all: SIGKILL to every group; bash's "Killed" job notices are swallowed.
kill_all() {
  { signal_all KILL; sleep 0.2; } 2>/dev/null
}
# any_alive: some process of the job (in any of the groups) is still there.
any_alive() {
  local pid
  for pid in "${pids[@]}"; do
    kill -0 -- "-$pid" 2>/dev/null && return 0
  done
  return 1
}
# stop_all: SIGTERM, then SIGKILL to whatever is left after the grace period.
stop_all() {
  local t
  signal_all TERM
  for ((t = 0; t < grace * 5; t++)); do
    any_alive || return 0
    sleep 0.2
  done
  if any_alive; then
    note "still running after ${grace}s: SIGKILL"
    kill_all
  fi
}

interrupted=""   # INT / TERM / HUP once one came
# shellcheck disable=SC2329  # invoked by trap
on_signal() {
  if [[ -n $interrupted ]]; then
    note "SIG$1 again: killing all processes"
    kill_all
    return
  fi
  interrupted=$1
  note "SIG$1: sending SIGTERM to all $nproc processes (they save a checkpoint and exit);" \
    "press Ctrl-C again to kill them"
  signal_all TERM
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

# Whatever ends this script (an error in it included), no process is left behind.
# shellcheck disable=SC2329  # invoked by trap
on_exit() {
  trap - INT TERM HUP
  if any_alive; then stop_all; fi
  local pid
  for pid in ${tee_pids[@]+"${tee_pids[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
}
trap on_exit EXIT

# Wait for the processes; at the first failure stop the others.
declare -A rank_of=()
for i in "${!pids[@]}"; do rank_of[${pids[$i]}]=$i; done
live=("${pids[@]}")
status=0
failed=""

# finished PID RC: bookkeeping for a process that ended.
finished() {
  local pid rest=()
  for pid in "${live[@]}"; do [[ $pid == "$1" ]] || rest+=("$pid"); done
  live=(${rest[@]+"${rest[@]}"})
  if (($2 != 0)) && [[ -z $failed ]]; then
    failed=${rank_of[$1]}
    status=$2
    note "process $failed exited with status $2 (log: $log_dir/rank$failed.log)"
    if ((${#live[@]} > 0)); then
      note "stopping the other processes"
      stop_all
    fi
  fi
}
# reap_dead: every listed process that is gone, with its status (bash keeps it for `wait PID`).
reap_dead() {
  local pid rc
  for pid in ${live[@]+"${live[@]}"}; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" 2>/dev/null || rc=$?
      finished "$pid" "$rc"
    fi
  done
}

use_wait_n=""
((BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1))) && use_wait_n=1
while ((${#live[@]} > 0)); do
  if [[ -n $use_wait_n ]]; then
    # Returns when one of them ends (done_pid set), or when a trapped signal interrupts it.
    done_pid=""
    rc=0
    wait -n -p done_pid "${live[@]}" 2>/dev/null || rc=$?
    if [[ -n ${done_pid:-} ]]; then
      finished "$done_pid" "$rc"
    elif ((rc == 127)); then
      sleep 0.2  # "no such job": reaped elsewhere; reap_dead collects it (never spin)
    fi
  else
    sleep 0.5
  fi
  reap_dead
done

if [[ -n $failed ]]; then
  exit "$status"
fi
if [[ $interrupted == INT ]]; then
  note "interrupted; logs in $log_dir"
  exit 130
fi
note "all $nproc processes exited 0; logs in $log_dir"
exit 0
