#!/usr/bin/env bash
# The real engines test_pool_remote and test_samples run remote pool workers with, started
# as root without systemd, each under a state directory of its own. Every subcommand is
# idempotent: start twice is one start, stop cleans up whatever a start (complete or not)
# left, and is safe when nothing runs.
#
#   engines.sh start-slurm    munged (private socket), slurmctld and slurmd on this host;
#                             returns once `srun -N1 true` works. Prints SLURM_CONF=...
#   engines.sh start-netns    namespaces cpr-a, cpr-b with veth links to the root namespace:
#                             root 10.213.N.1/30 <-> 10.213.N.2/30 in namespace N (1: cpr-a,
#                             2: cpr-b), lo up in each
#   engines.sh start-sshd     sshd on 127.0.0.1:2222, its own host key and a client key
#                             (root's authorized key only for this sshd). Prints SSH_KEY=...
#   engines.sh start          all three
#   engines.sh stop           everything above, and the state directory
#   engines.sh stop-slurm|stop-netns|stop-sshd   one of them
#   engines.sh env            the variables the tests read (SLURM_CONF, SSH_KEY, SSH_PORT)
#
# State: $COPROC_ENGINES_DIR (default /tmp/coproc-engines). Ports: slurmctld 16817,
# slurmd 16818, sshd 2222 (only on 127.0.0.1). Traffic stays on loopback and 10.213.0.0/16.
set -uo pipefail

state=${COPROC_ENGINES_DIR:-/tmp/coproc-engines}
ssh_port=${COPROC_SSH_PORT:-2222}
namespaces=(cpr-a cpr-b)
host=$(hostname)

die() {
  echo "engines.sh: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (it starts munged, slurmd and sshd, and makes namespaces)"

# pid of a daemon whose pid file is $1, if it runs.
running_pid() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Waits until "$@" succeeds, for at most $timeout seconds.
wait_until() {
  local timeout=$1
  shift
  local end=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}

stop_pidfile() {
  local pid
  if pid=$(running_pid "$1"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$1"
}

# ---- Slurm ---------------------------------------------------------------------------------

slurm_env() { echo "SLURM_CONF=$state/slurm/slurm.conf"; }

start_slurm() {
  local dir=$state/slurm
  export SLURM_CONF=$dir/slurm.conf
  if running_pid "$dir/slurmctld.pid" >/dev/null && running_pid "$dir/slurmd.pid" >/dev/null &&
    running_pid "$dir/munged.pid" >/dev/null && timeout 20 srun -N1 true >/dev/null 2>&1; then
    slurm_env
    return 0
  fi
  stop_slurm
  mkdir -p "$dir"/{munge,state,spool,log}
  chmod 700 "$dir/munge"
  # munged refuses a key readable by others, and one shorter than 32 bytes.
  local key=$dir/munge/munge.key
  if [ -f /etc/munge/munge.key ]; then
    cp /etc/munge/munge.key "$key"
  else
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
  fi
  chmod 400 "$key"
  munged --force --socket="$dir/munge/munge.socket" --key-file="$key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" || die "munged did not start: $(tail -3 "$dir/log/munged.log")"
  wait_until 10 test -S "$dir/munge/munge.socket" || die "munged made no socket"
  # 8 CPUs whatever the machine has (config_overrides): the tests run 4 and more tasks
  # on a 2-core machine.
  local cpus=8
  cat >"$SLURM_CONF" <<EOF
ClusterName=coproc-test
SlurmctldHost=$host
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=5
OverTimeLimit=0
SlurmdParameters=config_overrides
NodeName=$host CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
  slurmctld -i -f "$SLURM_CONF" || die "slurmctld did not start: $(tail -5 "$dir/log/slurmctld.log")"
  slurmd -f "$SLURM_CONF" || die "slurmd did not start: $(tail -5 "$dir/log/slurmd.log")"
  if ! wait_until 30 timeout 10 srun -N1 true; then
    echo "engines.sh: srun -N1 true does not work; the logs say:" >&2
    tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2
    timeout 10 srun -N1 true >&2
    exit 1
  fi
  slurm_env
}

stop_slurm() {
  local dir=$state/slurm
  stop_pidfile "$dir/slurmd.pid"
  stop_pidfile "$dir/slurmctld.pid"
  stop_pidfile "$dir/munged.pid"
  # Job steps slurmd started (slurmstepd) do not outlive it for long; be sure.
  pkill_exact slurmstepd
  rm -rf "$dir"
}

# Kills the processes named exactly $1 whose command line mentions our state directory.
pkill_exact() {
  local pid
  for pid in $(pgrep -x "$1" 2>/dev/null); do
    grep -qs "$state" "/proc/$pid/cmdline" "/proc/$pid/environ" && kill -KILL "$pid" 2>/dev/null
  done
  return 0
}

# ---- network namespaces ------------------------------------------------------------------------

netns_up() {
  local i=1 ns
  for ns in "${namespaces[@]}"; do
    ip netns exec "$ns" ip -4 addr show dev "cpr-v$i" 2>/dev/null | grep -q "10.213.$i.2" || return 1
    i=$((i + 1))
  done
}

start_netns() {
  if netns_up; then return 0; fi
  stop_netns
  local i=1 ns
  for ns in "${namespaces[@]}"; do
    ip netns add "$ns" || die "ip netns add $ns failed"
    ip -n "$ns" link set lo up
    # cpr-hN in the root namespace, cpr-vN in namespace N.
    ip link add "cpr-h$i" type veth peer name "cpr-v$i" netns "$ns" || die "veth cpr-h$i failed"
    ip addr add "10.213.$i.1/30" dev "cpr-h$i"
    ip link set "cpr-h$i" up
    ip -n "$ns" addr add "10.213.$i.2/30" dev "cpr-v$i"
    ip -n "$ns" link set "cpr-v$i" up
    # Every test address is reachable from every namespace through the root one.
    ip -n "$ns" route add 10.213.0.0/16 via "10.213.$i.1"
    i=$((i + 1))
  done
  wait_until 10 netns_ping || die "the namespaces do not reach 10.213.N.1"
}

netns_ping() {
  local i=1 ns
  for ns in "${namespaces[@]}"; do
    # (No ping here: a refused TCP connection shows the address answers.)
    local said
    said=$(ip netns exec "$ns" timeout 1 bash -c "exec 3<>/dev/tcp/10.213.$i.1/9" 2>&1)
    [[ $said == *refused* ]] || return 1
    i=$((i + 1))
  done
}

stop_netns() {
  local i=1 ns pid
  for ns in "${namespaces[@]}"; do
    # Whatever still runs in a namespace dies with it.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
    ip link del "cpr-h$i" 2>/dev/null
    i=$((i + 1))
  done
  return 0
}

# ---- sshd on loopback ----------------------------------------------------------------------

ssh_env() {
  echo "SSH_KEY=$state/ssh/client_key"
  echo "SSH_PORT=$ssh_port"
}

ssh_works() {
  ssh -p "$ssh_port" -i "$state/ssh/client_key" -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1 true
}

start_sshd() {
  local dir=$state/ssh
  if running_pid "$dir/sshd.pid" >/dev/null && ssh_works >/dev/null 2>&1; then
    ssh_env
    return 0
  fi
  stop_sshd
  mkdir -p "$dir"
  chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key" || die "ssh-keygen (host key) failed"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key" || die "ssh-keygen (client key) failed"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  # sshd needs its privilege separation directory.
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  cat >"$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1:$ssh_port
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
AcceptEnv COPROC_*
EOF
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log" || die "sshd did not start: $(tail -3 "$dir/sshd.log")"
  wait_until 10 ssh_works || die "ssh to 127.0.0.1:$ssh_port does not work: $(tail -3 "$dir/sshd.log")"
  ssh_env
}

stop_sshd() {
  local dir=$state/ssh pid
  stop_pidfile "$dir/sshd.pid"
  # Sessions of our sshd (their sshd children) go too.
  for pid in $(pgrep -x sshd 2>/dev/null); do
    grep -qs "$dir" "/proc/$pid/cmdline" && kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$dir"
}

# ---- main ------------------------------------------------------------------------------------

case "${1:-}" in
  start-slurm) mkdir -p "$state" && start_slurm ;;
  start-netns) mkdir -p "$state" && start_netns ;;
  start-sshd) mkdir -p "$state" && start_sshd ;;
  start)
    mkdir -p "$state"
    start_slurm && start_netns && start_sshd
    ;;
  stop-slurm) stop_slurm ;;
  stop-netns) stop_netns ;;
  stop-sshd) stop_sshd ;;
  stop | cleanup)
    stop_slurm
    stop_netns
    stop_sshd
    rm -rf "$state"
    ;;
  env)
    slurm_env
    ssh_env
    ;;
  *) die "usage: engines.sh start|start-slurm|start-netns|start-sshd|stop|stop-slurm|stop-netns|stop-sshd|env" ;;
esac
