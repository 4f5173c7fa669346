#!/usr/bin/env bash
# A two-node Slurm 22.05 cluster on this one Linux host, to try multi-host jobs
# (torchx -s slurm, c10d rendezvous across two addresses, a lost node) without a cluster.
#
#   sudo launchers/local_slurm.sh up       # ~10 s; prints the line below
#   eval "$(launchers/local_slurm.sh env)" # points sbatch/sacct/torchx at it (this shell only)
#   launchers/local_slurm.sh status        # daemons, nodes, link limits
#   sudo launchers/local_slurm.sh down     # stops what `up` started, removes what it made
#   sudo launchers/local_slurm.sh up --link-mbit 100   # each node's link at 100 Mbit/s each way
#                                          # (also on a cluster already up; 0 = unlimited again)
#
# Needs root and: apt-get install -y slurm-wlm munge slurmdbd mariadb-server (Debian 12).
#
# What it builds (everything private to it; a system Slurm/munge/MariaDB is left alone):
# - a bridge $BRIDGE with $NET.1/24 (a private /24 nothing else on the host routes) and, per
#   node, a network namespace with one veth on the bridge ($NET.11, $NET.12) and no default
#   route: the nodes reach the controller and each other, nothing else.
# - munged with its own key and socket; MariaDB (own datadir and socket, no TCP) under
#   slurmdbd; slurmctld in the root namespace on the bridge address; one slurmd per node.
# - Each slurmd runs in its node's network namespace AND its own UTS + mount namespace:
#   `nsenter --net` + `unshare --uts --mount` (NOT `ip netns exec`, which remounts /sys and
#   makes slurmd 22.05 die on its cgroup plugin), with its own hostname and a hosts file
#   bind-mounted on /etc/hosts that names every node. Job processes inherit all three, so
#   torchx's rendezvous endpoint (the first node's name) and gloo's own address resolve to
#   bridge addresses. The filesystem is shared: a job's cwd and the venv are the same paths.
# - SchedulerParameters=bf_interval=2: torchx submits heterogeneous jobs (one component per
#   replica), which only the backfill scheduler starts; its default pass is every 30 s.
# - Accounting through slurmdbd (torchx's `run --wait`, `status` and `log` call sacct).
# - AuthInfo cred_expire=$CRED_EXPIRE_S: Slurm holds a requeued job PENDING (Reason=BeginTime)
#   for the job-credential lifetime + 1 s (default 120 s: a job requeued after a lost node sat
#   2 minutes on idle nodes). Not much shorter, though: the requeued run reuses the job and step
#   IDs, and the first run's step cancel (srun --kill-on-bad-exit, sent when the surviving rank
#   fails, while the lost node cannot answer) is retried by slurmctld ~65 s later; reaching a
#   run that started sooner, it cancels it. Seen here 49-55 s after the requeue with
#   cred_expire=30 (the requeued torchx job died at start-up), so 80: the hold ends ~25 s after.
# - --link-mbit N: a token bucket filter (tc tbf) on both ends of each node's veth, so every
#   node's link carries at most N Mbit/s each way (netem, which could add delay, is not in
#   every kernel). Node to node traffic crosses two such links, so it also gets N.
# State, configs, logs and PID files live in $STATE (default /run/dlrm-slurm).
set -euo pipefail

STATE=${DLRM_SLURM_STATE:-/run/dlrm-slurm}
NET=${DLRM_SLURM_NET:-10.213.77}          # the /24 of the bridge
BRIDGE=dlrmbr0
NODES=(dlrm-n1 dlrm-n2)
CLUSTER=dlrmlocal
CTLD_PORT=16817 SLURMD_PORT=16818 DBD_PORT=16819
NODE_CPUS=${DLRM_SLURM_CPUS:-4}          # declared, may exceed the real count (config_overrides)
NODE_MEM_MB=${DLRM_SLURM_MEM_MB:-16384}
CRED_EXPIRE_S=${DLRM_SLURM_CRED_EXPIRE_S:-80}   # see above: the wait of a requeued job (>= 5)

die() { echo "local_slurm.sh: error: $*" >&2; exit 1; }
case "$STATE" in /*/*) ;; *) die "DLRM_SLURM_STATE must be an absolute path below /, e.g. /run/dlrm-slurm (down removes it)";; esac
log() { echo "local_slurm.sh: $*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || die "'$1' needs root (network namespaces, daemons)"; }
node_ip() { echo "$NET.$((11 + $1))"; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs in $STATE/log)"
    sleep 0.2
  done
}

check_tools() {
  local missing=()
  for t in slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db sacctmgr nsenter unshare ip tc; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  [ ${#missing[@]} = 0 ] || die "missing ${missing[*]}: apt-get install -y slurm-wlm munge slurmdbd mariadb-server"
}

write_configs() {
  local host; host=$(hostname -s)
  mkdir -p "$STATE"/{etc,log,ctld,spool,munge,mysql-run}
  for n in "${NODES[@]}"; do mkdir -p "$STATE/spool/$n"; done   # SlurmdSpoolDir must exist first
  {
    echo "127.0.0.1 localhost"
    echo "$NET.1 $host"
    for i in "${!NODES[@]}"; do echo "$(node_ip "$i") ${NODES[$i]}"; done
  } >"$STATE/etc/hosts"
  cat >"$STATE/etc/slurm.conf" <<EOF
# Written by launchers/local_slurm.sh: a two-node cluster on one host. Do not edit.
ClusterName=$CLUSTER
SlurmctldHost=$host($NET.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this + 1 s before it may start again (default 120; see the
# header of local_slurm.sh for why not less).
AuthInfo=socket=$STATE/munge/munge.socket,cred_expire=$CRED_EXPIRE_S
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# The munge socket for slurmdbd connections (AuthInfo covers only the others).
AccountingStoragePass=$STATE/munge/munge.socket
MailProg=/bin/true
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=10
MessageTimeout=5
KillWait=5
InactiveLimit=0
MinJobAge=60
NodeName=DEFAULT CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
EOF
  for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeAddr=$(node_ip "$i") NodeHostname=${NODES[$i]}" >>"$STATE/etc/slurm.conf"
  done
  echo "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$STATE/etc/slurm.conf"
  cat >"$STATE/etc/slurmdbd.conf" <<EOF
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"
}

check_network_free() {
  ip route | grep -q "^$NET\.0/24" && ! ip link show "$BRIDGE" >/dev/null 2>&1 &&
    die "$NET.0/24 is already routed on this host: set DLRM_SLURM_NET to a free private /24"
  return 0
}

make_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  for i in "${!NODES[@]}"; do
    local n=${NODES[$i]}
    [ -e "/run/netns/$n" ] || ip netns add "$n"
    if ! ip link show "veth-$n" >/dev/null 2>&1; then
      ip link add "veth-$n" type veth peer name eth0 netns "$n"
      ip link set "veth-$n" master "$BRIDGE" up
      ip -n "$n" addr add "$(node_ip "$i")/24" dev eth0
    fi
    ip -n "$n" link set lo up
    ip -n "$n" link set eth0 up
  done
}

# set_link MBIT: at most MBIT Mbit/s each way on every node's link; 0 removes the limit.
# tbf's burst: 10 ms at the rate (at least 32 KiB, more than one 9000-byte frame and the
# kernel's timer tick at these rates); its queue: 50 ms at the rate, beyond which it drops.
set_link() {
  local mbit=$1 n burst
  [[ "$mbit" =~ ^[0-9]+$ ]] || die "--link-mbit takes a whole number of Mbit/s (0: unlimited), not '$mbit'"
  burst=$((mbit * 1000000 / 8 / 100)); [ "$burst" -ge 32768 ] || burst=32768
  for n in "${NODES[@]}"; do
    if [ "$mbit" = 0 ]; then   # no such qdisc is fine: already unlimited
      tc -n "$n" qdisc del dev eth0 root 2>/dev/null || true
      tc qdisc del dev "veth-$n" root 2>/dev/null || true
    else                        # eth0 in the node: what it sends; veth-$n: what it receives
      tc -n "$n" qdisc replace dev eth0 root tbf rate "${mbit}mbit" burst "$burst" latency 50ms
      tc qdisc replace dev "veth-$n" root tbf rate "${mbit}mbit" burst "$burst" latency 50ms
    fi
  done
  echo "$mbit" >"$STATE/link-mbit"
  log "link of each node: $([ "$mbit" = 0 ] && echo unlimited || echo "$mbit Mbit/s each way (tc tbf)")"
}

link_status() {  # one line per node, read back from the kernel (not from what we wrote)
  local n out in
  for n in "${NODES[@]}"; do
    out=$(tc -n "$n" qdisc show dev eth0 2>/dev/null | sed -n 's/.*tbf .*rate \([^ ]*\).*/\1/p')
    in=$(tc qdisc show dev "veth-$n" 2>/dev/null | sed -n 's/.*tbf .*rate \([^ ]*\).*/\1/p')
    if [ -z "$out$in" ]; then echo "link $n: unlimited"
    else echo "link $n: out ${out:-unlimited}, in ${in:-unlimited} (tc tbf)"; fi
  done
}

start_munge() {
  pid_alive "$STATE/munged.pid" && return 0
  [ -f "$STATE/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" 2>/dev/null
                                       chmod 400 "$STATE/munge/munge.key"; }
  chmod 755 "$STATE/munge"
  munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/seed"
  wait_for 10 munged test -S "$STATE/munge/munge.socket"
}

start_mariadb() {
  pid_alive "$STATE/mysql-run/mariadb.pid" && return 0
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mkdir -p "$STATE/mysql"; chown mysql:mysql "$STATE/mysql" "$STATE/mysql-run"
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $STATE/log/mariadb-install.log"
  fi
  # As root with --user=mysql, no TCP: slurmdbd connects as root over the socket.
  setsid mariadbd --no-defaults --user=mysql --skip-networking --datadir="$STATE/mysql" \
    --socket="$STATE/mysql-run/mysqld.sock" --pid-file="$STATE/mysql-run/mariadb.pid" \
    --log-error="$STATE/mysql-run/mariadb.log" --innodb-buffer-pool-size=32M --skip-log-bin \
    >>"$STATE/log/mariadb.console" 2>&1 &
  wait_for 30 mariadb test -S "$STATE/mysql-run/mysqld.sock"
}

start_slurmdbd() {
  pid_alive "$STATE/slurmdbd.pid" && return 0
  # libmariadb takes the socket from MYSQL_UNIX_PORT: ours, not the system's /run/mysqld.
  MYSQL_UNIX_PORT="$STATE/mysql-run/mysqld.sock" SLURM_CONF="$STATE/etc/slurm.conf" \
    slurmdbd   # reads slurmdbd.conf beside $SLURM_CONF
  wait_for 20 slurmdbd sacctmgr -n list cluster
}

start_slurmctld() {
  pid_alive "$STATE/slurmctld.pid" && return 0
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i -Q add account local Cluster="$CLUSTER" Description=local Organization=local >/dev/null 2>&1 || true
  sacctmgr -i -Q add user root Account=local Cluster="$CLUSTER" >/dev/null 2>&1 || true
  slurmctld -f "$STATE/etc/slurm.conf"
  wait_for 20 slurmctld scontrol ping
}

start_slurmd() {  # start_slurmd INDEX
  local n=${NODES[$1]}
  pid_alive "$STATE/slurmd-$n.pid" && return 0
  # setsid: not in the caller's process group, whose Ctrl-C or timeout(1) would stop the node
  setsid nsenter --net="/run/netns/$n" -- unshare --uts --mount sh -c \
    "mount --bind '$STATE/etc/hosts' /etc/hosts && hostname '$n' && exec slurmd -D -N '$n' -f '$STATE/etc/slurm.conf'" \
    >>"$STATE/log/slurmd-$n.console" 2>&1 &
}

cmd_up() {  # cmd_up [--link-mbit N]: without it, a running cluster keeps its link as it is
  local link=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --link-mbit) [ $# -ge 2 ] || die "--link-mbit needs a value"; link=$2; shift 2 ;;
      --link-mbit=*) link=${1#*=}; shift ;;
      *) die "up: unknown argument '$1' (usage: up [--link-mbit N])" ;;
    esac
  done
  need_root up; check_tools; check_network_free
  local t0=$SECONDS
  write_configs
  make_network
  [ -z "$link" ] || set_link "$link"
  export SLURM_CONF="$STATE/etc/slurm.conf"
  start_munge; start_mariadb; start_slurmdbd; start_slurmctld
  for i in "${!NODES[@]}"; do start_slurmd "$i"; done
  local deadline=$((SECONDS + 30))
  until [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -cE '^(idle|alloc|mix|comp)')" = "${#NODES[@]}" ]; do
    [ $SECONDS -lt $deadline ] || { sinfo -N >&2 || true; die "nodes not idle after 30 s (logs in $STATE/log)"; }
    sleep 0.2
  done
  log "up in $((SECONDS - t0)) s: nodes ${NODES[*]} on $NET.0/24; state in $STATE"
  cmd_env
}

cmd_env() {
  [ -f "$STATE/etc/slurm.conf" ] || die "no cluster: run 'launchers/local_slurm.sh up' first"
  echo "export SLURM_CONF=$STATE/etc/slurm.conf"
}

ns_pids() {  # PIDs of every process in network namespace $1 (job steps included)
  local want; want=$(stat -L -c %i "/run/netns/$1" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$want" ] && echo "${p#/proc/}"
  done
  return 0
}

stop_pidfile() {  # stop_pidfile FILE: SIGTERM, then SIGKILL after 5 s
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# kill_node NODE: the node is lost: its slurmd, stepds and job processes die at once (SIGKILL).
cmd_kill_node() {
  need_root kill-node
  local n=${1:?usage: local_slurm.sh kill-node NODE}
  [ -e "/run/netns/$n" ] || die "no node $n"
  local pids; pids=$(ns_pids "$n")
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  rm -f "$STATE/slurmd-$n.pid"
  log "killed every process of $n"
}

cmd_down() {
  need_root down
  for n in "${NODES[@]}"; do
    stop_pidfile "$STATE/slurmd-$n.pid"
    local pids; pids=$(ns_pids "$n")             # job steps the slurmd left behind
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  done
  stop_pidfile "$STATE/slurmctld.pid"
  stop_pidfile "$STATE/slurmdbd.pid"
  stop_pidfile "$STATE/mysql-run/mariadb.pid"
  stop_pidfile "$STATE/munged.pid"
  for n in "${NODES[@]}"; do
    ip link del "veth-$n" 2>/dev/null || true
    [ ! -e "/run/netns/$n" ] || ip netns del "$n"
  done
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || ip link del "$BRIDGE"
  rm -rf "$STATE"
  log "down: daemons stopped, namespaces, bridge and $STATE removed"
}

cmd_status() {
  [ -d "$STATE" ] || { echo "down (no $STATE)"; return 3; }
  local rc=0
  for d in munged mysql-run/mariadb slurmdbd slurmctld "${NODES[@]/#/slurmd-}"; do
    if pid_alive "$STATE/$d.pid"; then echo "$d: running (pid $(cat "$STATE/$d.pid"))"
    else echo "$d: not running"; rc=3; fi
  done
  SLURM_CONF="$STATE/etc/slurm.conf" sinfo -N -o '%N %t %c %m' 2>/dev/null || rc=3
  link_status
  return $rc
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  kill-node) shift; cmd_kill_node "$@" ;;
  *) echo "usage: $0 up [--link-mbit N]|down|status|env|kill-node NODE" >&2; exit 2 ;;
esac
