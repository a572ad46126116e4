#!/usr/bin/env bash
# mpjax on a Cloud TPU VM slice (one or many hosts) through gcloud.
#
#   launch/tpu_vm.sh [OPTIONS] create            create the TPU VM, or reuse it if it exists
#   launch/tpu_vm.sh [OPTIONS] setup             copy the code to every worker (git-tracked
#                                                files as they are now, uncommitted changes
#                                                included; `git add` new files), make a venv
#                                                there, pip install -e . jax[tpu]
#   launch/tpu_vm.sh [OPTIONS] run ARGS...       python -m mpjax.main ARGS on every worker
#   launch/tpu_vm.sh [OPTIONS] stop              SIGTERM to the run on every worker (it saves a
#                                                checkpoint and exits 0)
#   launch/tpu_vm.sh [OPTIONS] logs [DIR]        copy every worker's run logs to DIR
#                                                (default logs/tpu-NAME)
#   launch/tpu_vm.sh [OPTIONS] delete            delete the TPU VM (asks first unless --yes)
#
# Example (a v5e slice of 16 chips on 4 hosts):
#   launch/tpu_vm.sh --name mp2 --type v5litepod-16 create
#   launch/tpu_vm.sh --name mp2 setup
#   launch/tpu_vm.sh --name mp2 run --config=configs/mp2.py --workdir=/mnt/shared/mp2 \
#       --config.data_dir=/mnt/shared/data
#   launch/tpu_vm.sh --name mp2 logs
#   launch/tpu_vm.sh --name mp2 delete
#
# How a run works: `gcloud compute tpus tpu-vm ssh --worker=all` starts the same command on
# every worker, in the foreground; each worker writes its output to ~/REMOTE_DIR/logs/
# <run id>-worker<N>.log and worker 0's log is streamed to this terminal. The command gets
# --distributed=on first (your arguments can override it): mpjax.main then calls
# jax.distributed.initialize() with no arguments, and JAX reads the slice (workers, coordinator)
# from the TPU VM metadata (a single-host slice is a job of one process). Ctrl-C here sends SIGTERM to the run on every worker
# (checkpoint, exit 0); if this terminal or connection dies instead, the run goes on (see it
# with `logs`, end it with `stop`). To resume, `run` again with the same --workdir: mpjax
# restores the latest checkpoint, also on a slice of another size.
# The workdir must be a directory every worker sees at the same path (checkpoints are written
# by all processes; metrics.jsonl, reports and final_metrics.json by process 0): e.g. a
# Filestore (NFS) share mounted on every worker; the data too, or a copy at the same path on
# every worker.
#
# Options (each also from an environment variable; the option wins):
#   --name NAME        TPU_NAME      TPU VM name (default mpjax)
#   --zone ZONE        TPU_ZONE      zone (default us-west4-a; pick one that has your type)
#   --project PROJECT  TPU_PROJECT   project (default: gcloud's configured project)
#   --type TYPE        TPU_TYPE      accelerator type (default v5litepod-16)
#   --version VERSION  TPU_VERSION   TPU software version (default from the type: v5litepod ->
#                                    v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5,
#                                    v6e -> v2-alpha-tpuv6e, v4 and older -> tpu-ubuntu2204-base)
#   --spot             TPU_SPOT=1    create a Spot TPU VM (cheaper, preemptible: a preempted VM
#                                    must be deleted and created again; rerun `run` to resume)
#   --env KEY=VALUE                  environment for `run` on every worker (repeatable)
#   --dry-run          DRY_RUN=1     print the commands instead of running them
#   --yes, -y                        `delete` without asking
# Environment only:
#   TPU_REMOTE_DIR     directory under the home of each worker (default mpjax): code/, venv/, logs/
#   TPU_PYTHON         Python on the workers (default python3.11: mpjax needs >= 3.11; `setup`
#                      installs it with apt when missing)
#   TPU_PIP_ARGS       extra pip arguments for `setup` (e.g. a -f URL for libtpu wheels)
#   TPU_CREATE_ARGS    extra gcloud arguments for `create` (e.g. "--reserved" or "--network=N")
set -euo pipefail

prog=${0##*/}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "$prog: $*" >&2; exit 2; }

name=${TPU_NAME:-mpjax}
zone=${TPU_ZONE:-us-west4-a}
project=${TPU_PROJECT:-}
type=${TPU_TYPE:-v5litepod-16}
version=${TPU_VERSION:-}
spot=${TPU_SPOT:-}
dry=${DRY_RUN:-}
[[ $dry == 0 ]] && dry=""
[[ $spot == 0 ]] && spot=""
yes=""
run_env=()
remote_dir=${TPU_REMOTE_DIR:-mpjax}
python_bin=${TPU_PYTHON:-python3.11}
read -r -a pip_args <<<"${TPU_PIP_ARGS:-}"
read -r -a create_args <<<"${TPU_CREATE_ARGS:-}"

# parse_options ARGS...: consumes leading options; sets nparsed to how many words were used.
nparsed=0
parse_options() {
  local n=0 opt val
  while (($# > 0)); do
    opt=$1
    case $opt in
      --name | --zone | --project | --type | --version | --env)
        (($# >= 2)) || die "$opt needs a value"
        val=$2; shift 2; n=$((n + 2)) ;;
      --name=* | --zone=* | --project=* | --type=* | --version=* | --env=*)
        val=${opt#*=}; opt=${opt%%=*}; shift; n=$((n + 1)) ;;
      --spot) spot=1; shift; n=$((n + 1)); continue ;;
      --dry-run) dry=1; shift; n=$((n + 1)); continue ;;
      --yes | -y) yes=1; shift; n=$((n + 1)); continue ;;
      -h | --help) usage ;;
      --) n=$((n + 1)); break ;;
      -*) die "unknown option $opt (see $prog --help)" ;;
      *) break ;;
    esac
    case $opt in
      --name) name=$val ;;
      --zone) zone=$val ;;
      --project) project=$val ;;
      --type) type=$val ;;
      --version) version=$val ;;
      --env)
        [[ $val =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$val'"
        run_env+=("$val") ;;
    esac
  done
  nparsed=$n
}

parse_options "$@"
shift "$nparsed"
(($# > 0)) || usage
cmd=$1
shift
case $cmd in
  create | setup | stop | logs | delete)
    # Options may also follow these subcommands.
    parse_options "$@"
    shift "$nparsed" ;;
  run) [[ ${1:-} == -- ]] && shift ;;  # everything after `run` goes to mpjax.main
  *) die "unknown subcommand '$cmd' (see $prog --help)" ;;
esac

[[ $remote_dir != /* && $remote_dir != *..* && -n $remote_dir ]] ||
  die "TPU_REMOTE_DIR must be a relative path under the home directory, got '$remote_dir'"

# quote WORD: WORD as one word for a POSIX shell (readable: bare when that is safe).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
# show CMD...: print a command, copy-pasteable.
show() {
  local line="+" a
  for a in "$@"; do line+=" $(quote "$a")"; done
  printf '%s\n' "$line"
}
# x CMD...: run it, or print it under --dry-run.
x() {
  if [[ -n $dry ]]; then show "$@"; else "$@"; fi
}
gflags=(--zone="$zone")
[[ -n $project ]] && gflags+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)

# Remote scripts are POSIX sh; the values they need are quoted into them here.
rdir=$(quote "$remote_dir")
# remote_worker: shell code that sets W to this worker's number (0 = the one JAX calls process 0).
# shellcheck disable=SC2016  # expanded on the worker
remote_worker='W=$(curl -sf -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'

cmd_create() {
  if [[ -z $version ]]; then
    case $type in
      v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v6e-*) version=v2-alpha-tpuv6e ;;
      v2-* | v3-* | v4-*) version="tpu-ubuntu2204-base" ;;
      *) die "no default software version for type '$type': give --version" ;;
    esac
  fi
  if [[ -z $dry ]] && state=$("${tpu[@]}" describe "$name" "${gflags[@]}" --format='value(state)' 2>/dev/null); then
    echo "$prog: TPU VM $name exists in $zone (state $state): reusing it"
    [[ $state == READY ]] || echo "$prog: warning: state is $state, not READY" \
      "(a preempted Spot VM has to be deleted and created again)" >&2
    return 0
  fi
  [[ -n $dry ]] && echo "# (creates it only if this finds none:)" && show "${tpu[@]}" describe "$name" "${gflags[@]}" --format='value(state)'
  local extra=()
  [[ -n $spot ]] && extra+=(--spot)
  x "${tpu[@]}" create "$name" "${gflags[@]}" --accelerator-type="$type" --version="$version" \
    ${extra[@]+"${extra[@]}"} ${create_args[@]+"${create_args[@]}"}
}

cmd_setup() {
  # The code: git-tracked files as in the working tree (uncommitted changes to tracked files
  # included through `git stash create`, which touches nothing), never untracked files.
  local rev tmp tarball
  rev=$(git -C "$repo" stash create 2>/dev/null || true)
  if [[ -n $rev ]]; then
    echo "$prog: shipping HEAD $(git -C "$repo" rev-parse --short HEAD) plus uncommitted changes to tracked files"
  else
    rev=HEAD
    echo "$prog: shipping HEAD $(git -C "$repo" rev-parse --short HEAD)"
  fi
  if [[ -n $dry ]]; then
    tmp=${TMPDIR:-/tmp}/tmp.XXXXXXXXXX
  else
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
  fi
  tarball=$tmp/mpjax-src.tar.gz
  x git -C "$repo" archive --format=tar.gz -o "$tarball" "$rev"
  x "${tpu[@]}" scp "$tarball" "$name:mpjax-src.tar.gz" --worker=all "${gflags[@]}"
  local pip_extra="" a py
  for a in ${pip_args[@]+"${pip_args[@]}"}; do pip_extra+=" $(quote "$a")"; done
  py=$(quote "$python_bin")
  local script
  script="set -eu
D=\"\$HOME\"/$rdir
mkdir -p \"\$D\"
rm -rf \"\$D/code.new\" && mkdir \"\$D/code.new\"
tar -xzf \"\$HOME/mpjax-src.tar.gz\" -C \"\$D/code.new\"
rm -rf \"\$D/code\" && mv \"\$D/code.new\" \"\$D/code\" && rm -f \"\$HOME/mpjax-src.tar.gz\"
if ! command -v $py >/dev/null 2>&1; then
  sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq $py $py-venv
fi
[ -x \"\$D/venv/bin/python\" ] || $py -m venv \"\$D/venv\"
\"\$D/venv/bin/pip\" install -q -U pip
\"\$D/venv/bin/pip\" install -q -e \"\$D/code\" 'jax[tpu]'$pip_extra
$remote_worker
echo \"worker \$W: \$(\"\$D/venv/bin/python\" -c 'import jax, importlib.metadata as m; print(\"jax\", jax.__version__, \"libtpu\", m.version(\"libtpu\"))')\""
  x "${tpu[@]}" ssh "$name" --worker=all "${gflags[@]}" --command="$script"
}

cmd_run() {
  (($# > 0)) || die "run needs the arguments of mpjax.main, e.g. run --config=configs/mp2.py --workdir=DIR"
  local run_id args="" envs="" a
  run_id=$(date +%Y%m%d-%H%M%S)
  # --distributed=on: on a TPU VM created with gcloud the slice is described in the metadata
  # server, not in environment variables, so say it explicitly.
  for a in --distributed=on "$@"; do args+=" $(quote "$a")"; done
  for a in ${run_env[@]+"${run_env[@]}"}; do envs+="export $(quote "$a")
"; done
  local script
  script="set -eu
D=\"\$HOME\"/$rdir
$remote_worker
P=\$(cat \"\$D/run.pid\" 2>/dev/null || true)
if [ -n \"\$P\" ] && kill -0 \"\$P\" 2>/dev/null; then
  echo \"worker \$W: a run is still going (pid \$P); end it first: $prog stop\" >&2
  exit 1
fi
mkdir -p \"\$D/logs\"
LOG=\"\$D/logs/$run_id-worker\$W.log\"
cd \"\$D/code\"
. \"\$D/venv/bin/activate\"
export PYTHONUNBUFFERED=1
${envs}printf 'worker %s: %s  (log: %s)\\n' \"\$W\" $(quote "python -m mpjax.main$args") \"\$LOG\" >&2
: >\"\$LOG\"
python -m mpjax.main$args >>\"\$LOG\" 2>&1 </dev/null &
PID=\$!
echo \"\$PID\" >\"\$D/run.pid\"
if [ \"\$W\" = 0 ]; then tail -n +1 -f --pid=\"\$PID\" \"\$LOG\" & fi
RC=0
wait \"\$PID\" || RC=\$?
wait
rm -f \"\$D/run.pid\"
echo \"worker \$W: exit status \$RC (log: \$LOG)\" >&2
exit \"\$RC\""
  if [[ -z $dry ]]; then
    trap 'trap - INT; echo; echo "$prog: Ctrl-C: SIGTERM to the run on every worker (it saves a checkpoint and exits)" >&2; cmd_stop; exit 130' INT
  fi
  x "${tpu[@]}" ssh "$name" --worker=all "${gflags[@]}" --command="$script"
}

cmd_stop() {
  local script
  script="D=\"\$HOME\"/$rdir
$remote_worker
P=\$(cat \"\$D/run.pid\" 2>/dev/null || true)
if [ -n \"\$P\" ] && kill -TERM \"\$P\" 2>/dev/null; then
  echo \"worker \$W: SIGTERM sent to pid \$P\"
else
  echo \"worker \$W: no run going\"
fi"
  x "${tpu[@]}" ssh "$name" --worker=all "${gflags[@]}" --command="$script"
}

cmd_logs() {
  local dest=${1:-logs/tpu-$name}
  x mkdir -p "$dest"
  x "${tpu[@]}" scp "$name:$remote_dir/logs/*" "$dest/" --worker=all "${gflags[@]}"
  [[ -n $dry ]] || echo "$prog: logs in $dest"
}

cmd_delete() {
  if [[ -z $dry && -z $yes ]]; then
    [[ -t 0 ]] || die "refusing to delete $name without a terminal to ask on: pass --yes"
    local answer
    read -r -p "Delete TPU VM $name in $zone${project:+ (project $project)}? [y/N] " answer
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]] || { echo "$prog: not deleted"; return 0; }
  fi
  x "${tpu[@]}" delete "$name" "${gflags[@]}" --quiet
}

if [[ -z $dry ]] && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found (install the Google Cloud CLI, or use --dry-run)"
fi
"cmd_$cmd" "$@"
