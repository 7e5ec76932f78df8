#!/usr/bin/env bash
# A multi-node cluster on one Linux machine, for tests and for calibrating the
# planner: each "node" is a network namespace with its own hostname (a UTS
# namespace) and one address on a private bridge this script creates, so that
# OpenMPI sees separate hosts, talks TCP between them and shared memory inside
# one. Needs root and iproute2 (ip, tc); nothing outside the namespaces and
# the bridge it made is touched.
#
#   scripts/cluster.sh up N [--ranks-per-node R] [--rate 1gbit] [--delay 0.5ms] [--dir DIR]
#   scripts/cluster.sh down [--dir DIR]
#   scripts/cluster.sh check              # exit 0 when a cluster can be made here, else say why
#
# `up` writes into DIR (default $SHARDLM_CLUSTER_DIR or /tmp/shardlm-cluster):
#   hostfile          node0 slots=R ...
#   mpirun            mpirun run on node0 with the hostfile, the launcher agent
#                     (no sshd: daemons start in the nodes' namespaces) and TCP
#                     restricted to the bridge's subnet; arguments are mpirun's
#   exec NODE CMD...  runs CMD inside node NODE (0-based)
#   nodes             one line per node: index, namespace, hostname, address, link
# --rate limits each node's link in both directions (tc tbf); --delay is the
# one-way delay added to everything a node sends (tc netem, which some kernels
# lack: then --delay is refused with a message). Shared memory between nodes is not prevented (one kernel),
# but OpenMPI only uses it between ranks that report the same hostname.
set -euo pipefail

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

DIR="${SHARDLM_CLUSTER_DIR:-/tmp/shardlm-cluster}"

# Empty when a cluster can be made here, else the reason.
why_not() {
  [ "$(id -u)" -eq 0 ] || {
    echo "not root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    return
  }
  for tool in ip tc unshare nsenter mpirun; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "'$tool' not found (iproute2, util-linux, openmpi-bin)"
      return
    }
  done
  # Namespaces may be forbidden even to root (an unprivileged container).
  local probe="shardlm-probe-$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "'ip netns add' failed (no permission to create network namespaces here)"
    return
  fi
  ip netns del "$probe"
  if ! unshare --uts true 2>/dev/null; then
    echo "'unshare --uts' failed (no permission to create UTS namespaces here)"
  fi
}

# A token bucket for --rate, up to 100 ms of queue before drops. Its burst
# passes at memory speed, which a real link does not: keep it as small as the
# 64 KiB segmentation-offload packets allow (a packet larger than the bucket
# is never sent), so that a collective of a few hundred KiB takes what the
# rate says and not a fraction of it.
tbf() {
  echo "tbf rate $1 burst 72kb latency 100ms"
}

has_netem() {
  local probe="slmq$$"
  ip link add "$probe" type veth peer name "${probe}b" 2>/dev/null || return 1
  local ok=0
  tc qdisc add dev "$probe" root netem delay 1ms 2>/dev/null || ok=1
  ip link del "$probe" 2>/dev/null || true
  return $ok
}

down() {
  [ -f "$DIR/state" ] || return 0
  # shellcheck disable=SC1091
  source "$DIR/state"
  local i
  for ((i = 0; i < NODES; ++i)); do
    local ns="${PREFIX}-node$i"
    # Every process left in the node first: a test that failed may leave a job.
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    if [ -e "$DIR/uts/node$i" ]; then
      umount "$DIR/uts/node$i" 2>/dev/null || true
      rm -f "$DIR/uts/node$i"
    fi
    ip link del "${PREFIX}p$i" 2>/dev/null || true
  done
  ip link del "${PREFIX}br" 2>/dev/null || true
  rm -rf "$DIR"
}

up() {
  local nodes="" ranks=2 rate="" delay=""
  while (($#)); do
    case "$1" in
      --ranks-per-node) ranks="$2"; shift 2 ;;
      --rate) rate="$2"; shift 2 ;;
      --delay) delay="$2"; shift 2 ;;
      --dir) DIR="$2"; shift 2 ;;
      -*) die "up: unknown option $1" ;;
      *) [ -z "$nodes" ] || die "up: one node count, got '$nodes' and '$1'"; nodes="$1"; shift ;;
    esac
  done
  [[ "$nodes" =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= 64)) || die "up: N must be 1..64, got '$nodes'"
  if [ -n "$delay" ] && ! has_netem; then
    die "--delay needs the kernel's netem queueing discipline, which this kernel lacks (--rate alone works: it uses tbf)"
  fi
  [[ "$ranks" =~ ^[0-9]+$ ]] && ((ranks >= 1)) || die "up: --ranks-per-node must be >= 1, got '$ranks'"
  local reason
  reason=$(why_not)
  [ -z "$reason" ] || die "cannot make a cluster here: $reason"
  [ ! -e "$DIR/state" ] || die "$DIR already holds a cluster: 'cluster.sh down --dir $DIR' first"

  # Names unique to this cluster (interface names are at most 15 characters),
  # and a /24 in 10.213.0.0/16 that no route of this machine uses yet.
  local id subnet=""
  id=$(printf '%04x' $((RANDOM % 65536)))
  local prefix="slm$id" octet
  for octet in $(shuf -i 0-255); do
    if ! ip -4 route | grep -q "^10\.213\.$octet\."; then
      subnet="10.213.$octet"
      break
    fi
  done
  [ -n "$subnet" ] || die "no free /24 in 10.213.0.0/16"
  mkdir -p "$DIR/uts"
  cat >"$DIR/state" <<EOF
PREFIX=$prefix
NODES=$nodes
SUBNET=$subnet
EOF
  # From here on a failure removes what was made.
  trap 'echo "cluster.sh: up failed; removing what it made" >&2; down' ERR

  ip link add "${prefix}br" type bridge
  ip addr add "$subnet.254/24" dev "${prefix}br"
  ip link set "${prefix}br" up
  : >"$DIR/hostfile"
  : >"$DIR/nodes"
  local i
  for ((i = 0; i < nodes; ++i)); do
    local ns="${prefix}-node$i" host="node$i" addr="$subnet.$((i + 1))"
    ip netns add "$ns"
    touch "$DIR/uts/node$i"
    unshare --uts="$DIR/uts/node$i" hostname "$host"
    ip link add "${prefix}p$i" type veth peer name eth0 netns "$ns"
    ip link set "${prefix}p$i" master "${prefix}br" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # TCP gives up on a peer that stopped acknowledging after about 3 s
    # rather than Linux's default of about 15 minutes, so that when a node is
    # cut off with data in flight, mpirun learns it promptly (the keepalive
    # settings in the mpirun wrapper cover idle connections). Per namespace.
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_retries2=3
    # Each direction of a node's link carries --rate (a token bucket on both
    # ends of the veth pair); what a node sends is delayed by --delay, so two
    # nodes are one --delay apart.
    if [ -n "$delay" ]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: netem limit 100000 delay "$delay"
      [ -z "$rate" ] || ip netns exec "$ns" tc qdisc add dev eth0 parent 1: handle 2: $(tbf "$rate")
    elif [ -n "$rate" ]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root $(tbf "$rate")
    fi
    [ -z "$rate" ] || tc qdisc add dev "${prefix}p$i" root $(tbf "$rate")
    echo "$host slots=$ranks" >>"$DIR/hostfile"
    echo "$i $ns $host $addr ${prefix}p$i" >>"$DIR/nodes"
  done

  # exec NODE CMD...: a command inside a node's network and UTS namespaces.
  cat >"$DIR/exec" <<EOF
#!/usr/bin/env bash
node="\$1"; shift
exec nsenter --net=/run/netns/${prefix}-node\$node --uts="$DIR/uts/node\$node" "\$@"
EOF
  # OpenMPI's launcher agent (plm_rsh_agent), called as ssh would be:
  # AGENT HOST COMMAND... where COMMAND is one shell command line.
  cat >"$DIR/agent" <<EOF
#!/usr/bin/env bash
host="\$1"; shift
[[ "\$host" =~ ^node([0-9]+)\$ ]] || { echo "cluster agent: unknown host \$host" >&2; exit 255; }
exec "$DIR/exec" "\${BASH_REMATCH[1]}" /bin/sh -c "\$*"
EOF
  # The nodes share this machine's cores: when their ranks outnumber them,
  # waiting ranks must yield to computing ones (OpenMPI cannot see it, since
  # each node looks uncrowded on its own; measured 981 -> 161 ms per decode
  # step of tiny on 2 nodes x 2 ranks on 2 cores).
  local yield=""
  ((nodes * ranks <= $(nproc))) || yield="--mca mpi_yield_when_idle 1"
  # Nor may ranks be bound to cores: each node's daemon binds its own ranks
  # from core 0 up, so with one rank per node (OpenMPI binds to cores up to 2
  # ranks) every node's rank sat on core 0 of the one machine (measured: a
  # 16-step decode of `small` on 2 nodes x 1 rank took 4472 ms bound, 117 ms
  # not). The kernel spreads unbound ranks over the cores.
  # mpirun on node0 with the cluster's hostfile, TCP only on the bridge.
  # The short TCP keepalive lets a daemon whose node was cut off notice it
  # within seconds, kill its ranks and exit, instead of after OpenMPI's
  # default 300 s + 9 x 20 s.
  cat >"$DIR/mpirun" <<EOF
#!/usr/bin/env bash
exec "$DIR/exec" 0 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \\
  mpirun --hostfile "$DIR/hostfile" --mca plm_rsh_agent "$DIR/agent" \\
  --mca oob_tcp_if_include $subnet.0/24 --mca btl_tcp_if_include $subnet.0/24 \\
  --mca btl self,vader,tcp $yield --mca hwloc_base_binding_policy none \\
  --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 \\
  "\$@"
EOF
  chmod +x "$DIR/exec" "$DIR/agent" "$DIR/mpirun"
  trap - ERR
  echo "cluster: $nodes node(s) on $subnet.0/24 (bridge ${prefix}br), $ranks slot(s) each${rate:+, rate $rate}${delay:+, delay $delay}; $DIR/mpirun ARGS to run"
}

cmd="${1:-}"
[ -n "$cmd" ] || die "usage: cluster.sh up N [...] | down [--dir DIR] | check"
shift
case "$cmd" in
  up) up "$@" ;;
  down)
    [ "${1:-}" != "--dir" ] || DIR="$2"
    down
    ;;
  check)
    reason=$(why_not)
    [ -z "$reason" ] || {
      echo "$reason"
      exit 1
    }
    ;;
  *) die "unknown command '$cmd' (up, down, check)" ;;
esac
