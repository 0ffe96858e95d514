#!/usr/bin/env bash
# Media relay benchmark: sipcar's mediarelay (fan-in and fallback, and with the kernel fast
# path), rtpengine in userspace mode, a minimal C recvmmsg/sendmmsg forwarder and the kernel's
# own NAT (nftables DNAT+SNAT with conntrack, the limit), measured in one run on this machine
# with cmd/rtpload. Prints one table.
#
# Topology: two network namespaces made here and removed on exit.
#   gen   198.18.0.2 (ga0) == in0  198.18.0.1   relay
#   gen 198.51.100.2 (gb0) == out0 198.51.100.1 relay
# rtpload (gen) plays both ends of every call; the relay under test runs in relay. The relay
# is pinned to CPU 0 and the generator to CPU 1, both at nice -15 (other work on this shared
# machine then disturbs them less), and each side's receive processing runs on its own core:
# in a NAPI thread per veth pinned there (STEERING=napi, the default) or through RPS
# (STEERING=rps, the method before the fourth session).
#
# Usage (root): integration/bench/run.sh [-q]   (-q: short runs, for a smoke test)
# Environment: CALLS="500 1000 2000" (load points, 50 packets/s per direction per call),
# SECONDS_PER_RUN=10, SAT_CALLS=500, SAT_SECONDS=3, SAT_RATES="80000 ... max", SAMPLE=4,
# RELAYS="sipcar-fanin sipcar-kernel kernel-nat sipcar-fanin-perport sipcar-fallback rtpengine
# cfwd" (also sipcar-fanin-noquality: fan-in with call-quality analysis off), REPEAT=2,
# VERBOSE=1, RELAYD_ARGS (more flags for sipcar's relayd, e.g. "-cpuprofile /tmp/relayd.prof"),
# STEERING=napi|rps, GEN_DEFER="ROUNDS NS" (napi: the generator's veths poll ROUNDS more times
# every NS nanoseconds before waiting for a wake-up, a NIC's interrupt moderation; default "2
# 20000", as the relay's).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
calls_list=${CALLS:-"500 1000 2000"}
run_secs=${SECONDS_PER_RUN:-10}
sat_calls=${SAT_CALLS:-500}
sat_secs=${SAT_SECONDS:-3}
sample=${SAMPLE:-4} # time every 4th stream; nftables counts the others' arrivals
relays=${RELAYS:-"sipcar-fanin sipcar-kernel kernel-nat sipcar-fanin-perport sipcar-fallback rtpengine cfwd"}
steering=${STEERING:-napi}
# Saturation: offered rates stepped up (packets/s, both directions together, over SAT_CALLS
# calls), each on a freshly started relay, timed like the load points; "max" is as fast as
# the generator can send. The rates above 200k are for the kernel paths.
sat_rates=${SAT_RATES:-"80000 110000 140000 160000 180000 250000 350000 max"}
flood_secs=${FLOOD_SECONDS:-3}
if [ "${1:-}" = "-q" ]; then
  calls_list=${CALLS:-"500"}; run_secs=${SECONDS_PER_RUN:-2}; sat_secs=2; sat_rates=${SAT_RATES:-"100000 max"}
fi
max_calls=0
for c in $calls_list $sat_calls; do [ "$c" -gt "$max_calls" ] && max_calls=$c; done

[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, nftables, raw sockets)" >&2; exit 1; }
if ! command -v rtpengine >/dev/null || ! command -v gcc >/dev/null || ! command -v ethtool >/dev/null || ! command -v conntrack >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rtpengine-daemon gcc libc6-dev ethtool conntrack >&2
fi
for tool in ip nft taskset gcc go ethtool conntrack; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

# The script itself runs at the priority of the relays and the generator (which inherit it):
# on a loaded machine its measuring windows (sleep, then read the counters) would otherwise
# stretch by seconds and miss the traffic they time.
renice -n -15 -p $$ >/dev/null

work=$(mktemp -d)
tag="scb$$"
gen="${tag}g"
relay="${tag}r"
relay_pid=""
cleanup() {
  if [ -n "$relay_pid" ]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
  ip netns del "$gen" 2>/dev/null || true
  ip netns del "$relay" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "building..." >&2
(cd "$root" && go build -o "$work/rtpload" ./cmd/rtpload && go build -o "$work/relayd" ./integration/bench/relayd \
  && go build -o "$work/ngctl" ./integration/bench/ngctl && go build -o "$work/flood" ./integration/bench/flood)
gcc -O2 -Wall -Wextra -o "$work/cfwd" "$here/cfwd.c"

# --- namespaces -------------------------------------------------------------------------
for ns in "$gen" "$relay"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6'
done
ip link add in0 netns "$relay" address 02:00:00:00:01:01 type veth peer name ga0 netns "$gen" address 02:00:00:00:01:02
ip link add out0 netns "$relay" address 02:00:00:00:02:01 type veth peer name gb0 netns "$gen" address 02:00:00:00:02:02
ip -n "$relay" addr add 198.18.0.1/24 dev in0
ip -n "$relay" addr add 198.51.100.1/24 dev out0
ip -n "$gen" addr add 198.18.0.2/24 dev ga0
ip -n "$gen" addr add 198.51.100.2/24 dev gb0
for l in "$relay in0" "$relay out0" "$gen ga0" "$gen gb0"; do ip -n "${l% *}" link set "${l#* }" up; done
# Each side's receive processing runs on its own core, as a NIC's interrupt would put it,
# rather than on the core of the sender that pushed the packet into the veth. RPS does that
# with an inter-processor interrupt whenever the other core's backlog was empty: in this VM
# each one is a VM exit, and they took a quarter of both cores and kept the generator from
# offering 2000 calls' load (64k-200k packets/s depending on the relay and the run). A veth in
# NAPI mode (GRO on; TSO off on the sending peer, or the veth hands its packets past NAPI)
# with threaded NAPI instead queues into a ring that a kernel thread, pinned to the receiving
# side's core and given the same priority as the program there, drains. Waking that thread
# from the other core is an IPI too, so the thread does not go back to waiting for a wake-up
# as soon as it has run the ring empty: it polls again from a 20 us timer on its own core,
# twice (napi_defer_hard_irqs, gro_flush_timeout), the interrupt moderation of a NIC.
napi_thread() { # ns dev cpu
  local before after thread
  ip netns exec "$1" ethtool -K "$2" tso off gro on >/dev/null
  ip netns exec "$1" sh -c "echo ${4:-2} >/sys/class/net/$2/napi_defer_hard_irqs; echo ${5:-20000} >/sys/class/net/$2/gro_flush_timeout"
  before=$(pgrep '^napi/' | sort || true)
  ip netns exec "$1" sh -c "echo 1 >/sys/class/net/$2/threaded"
  after=$(pgrep '^napi/' | sort || true)
  thread=$(comm -13 <(echo "$before") <(echo "$after"))
  [ "$(wc -w <<<"$thread")" = 1 ] || { echo "threaded NAPI for $2: no single new napi/ thread ($thread)" >&2; exit 1; }
  taskset -pc "$3" "$thread" >/dev/null
  renice -n -15 -p "$thread" >/dev/null
  [ "$1" = "$relay" ] && relay_napi+=("$thread")
  return 0
}
relay_napi=() # the NAPI threads of the relay's veths: its receive path, and the kernel relays' all
case $steering in
  napi)
    napi_thread "$relay" in0 0; napi_thread "$relay" out0 0
    napi_thread "$gen" ga0 1 ${GEN_DEFER:-}; napi_thread "$gen" gb0 1 ${GEN_DEFER:-} ;;
  rps)
    ip netns exec "$relay" sh -c 'echo 1 >/sys/class/net/in0/queues/rx-0/rps_cpus; echo 1 >/sys/class/net/out0/queues/rx-0/rps_cpus'
    ip netns exec "$gen" sh -c 'echo 2 >/sys/class/net/ga0/queues/rx-0/rps_cpus; echo 2 >/sys/class/net/gb0/queues/rx-0/rps_cpus' ;;
  *) echo "STEERING=$steering: want napi or rps" >&2; exit 1 ;;
esac
ip -n "$relay" neigh replace 198.18.0.2 lladdr 02:00:00:00:01:02 dev in0 nud permanent
ip -n "$relay" neigh replace 198.51.100.2 lladdr 02:00:00:00:02:02 dev out0 nud permanent
ip -n "$gen" neigh replace 198.18.0.1 lladdr 02:00:00:00:01:01 dev ga0 nud permanent
ip -n "$gen" neigh replace 198.51.100.1 lladdr 02:00:00:00:02:01 dev gb0 nud permanent

# Static call layout for sipcar and the C forwarder: call i uses relay ports 20000+4i (A,
# +1 RTCP) and 20002+4i (B); the endpoints are 198.18.0.2:30000+2i and 198.51.100.2:40000+2i.
static_pairs="$work/pairs-static"
for ((i = 0; i < max_calls; i++)); do
  echo "198.18.0.2:$((30000 + 2 * i)) 198.18.0.1:$((20000 + 4 * i)) 198.51.100.2:$((40000 + 2 * i)) 198.51.100.1:$((20002 + 4 * i))"
done >"$static_pairs"

# The kernel's own NAT as a relay: each relay port DNATs to the far peer, and SNAT makes the
# packet leave from the far leg's relay port (the first packet of a flow; conntrack does the
# rest, replies included), with forwarding on in the relay namespace only while it runs.
nat_rules="$work/nat.nft"
{
  echo "table ip benchnat {"
  echo "  map peerof { type ipv4_addr . inet_service : ipv4_addr . inet_service; elements = {"
  awk '{ split($1, a, ":"); split($2, ra, ":"); split($3, b, ":"); split($4, rb, ":")
         printf "    %s . %s : %s . %s,\n    %s . %s : %s . %s,\n", ra[1], ra[2], b[1], b[2], rb[1], rb[2], a[1], a[2] }' "$static_pairs"
  echo "  } }"
  echo "  map portof { type ipv4_addr . inet_service : ipv4_addr . inet_service; elements = {"
  awk '{ split($1, a, ":"); split($2, ra, ":"); split($3, b, ":"); split($4, rb, ":")
         printf "    %s . %s : %s . %s,\n    %s . %s : %s . %s,\n", b[1], b[2], rb[1], rb[2], a[1], a[2], ra[1], ra[2] }' "$static_pairs"
  echo "  } }"
  echo "  chain pre { type nat hook prerouting priority dstnat; policy accept; meta l4proto udp dnat ip to ip daddr . udp dport map @peerof; }"
  echo "  chain post { type nat hook postrouting priority srcnat; policy accept; meta l4proto udp snat ip to ip daddr . udp dport map @portof; }"
  echo "}"
} >"$nat_rules"
nat_off() {
  ip netns exec "$relay" nft delete table ip benchnat 2>/dev/null || true
  ip netns exec "$relay" sysctl -qw net.ipv4.ip_forward=0
  ip netns exec "$relay" conntrack -F 2>/dev/null || true # its NAT bindings would outlive the table
}

# --- measuring ----------------------------------------------------------------------------
clk_tck=$(getconf CLK_TCK)
# snapshot reads, with shell builtins only (a fork can take long on a loaded machine, and would
# skew the window), the time (us) and what the relay has cost so far: snap_c, busy jiffies of
# CPU 0 (user nice system irq softirq steal: the relay's core, every process on it); snap_p,
# the relay process's user+system jiffies; snap_n, nanoseconds on a CPU (schedstat) of the
# relay process's threads and of the relay side's NAPI threads: everything the relay costs,
# whatever else runs on its core (for the kernel relays, sipcar-kernel once legs are handed
# over and kernel-nat, the NAPI threads are where the forwarding happens).
snapshot() {
  local f v rest
  local -a fields
  snap_t=${EPOCHREALTIME/./}
  while read -r -a fields; do
    if [ "${fields[0]}" = cpu0 ]; then
      snap_c=$((fields[1] + fields[2] + fields[3] + fields[6] + fields[7] + fields[8]))
      break
    fi
  done </proc/stat
  read -r -a fields <"/proc/$relay_pid/stat"
  snap_p=$((fields[13] + fields[14]))
  snap_n=0
  for f in /proc/"$relay_pid"/task/*/schedstat; do
    if read -r v rest <"$f"; then snap_n=$((snap_n + v)); fi
  done 2>/dev/null
  for f in "${relay_napi[@]}"; do
    if read -r v rest <"/proc/$f/schedstat"; then snap_n=$((snap_n + v)); fi
  done
}
cpu0_busy() { snapshot; echo "$snap_c"; }
# drops prints, for VERBOSE, where packets were dropped so far: each veth's rx/tx drop
# counters and each namespace's UDP receive-buffer errors (a socket that did not keep up).
drops() {
  local ns dev
  for nd in "$gen ga0" "$gen gb0" "$relay in0" "$relay out0"; do
    ns=${nd% *} dev=${nd#* }
    printf '%s rx_dropped %s tx_dropped %s; ' "$dev" "$(ip netns exec "$ns" cat "/sys/class/net/$dev/statistics/rx_dropped")" \
      "$(ip netns exec "$ns" cat "/sys/class/net/$dev/statistics/tx_dropped")"
  done
  for ns in "$gen" "$relay"; do
    printf '%s udp %s; ' "${ns: -1}" "$(ip netns exec "$ns" awk '/^Udp:/ { if (h) print "rcvbuf_errors " $6 " sndbuf_errors " $7; h = 1 }' /proc/net/snmp)"
  done
  echo
}
json_field() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"; }

start_relay() { # name -> sets relay_pid, pairs
  local name=$1 log="$work/$1.log"
  relay_log=$log
  pairs=$static_pairs
  case $name in
    sipcar-fanin) ip netns exec "$relay" taskset -c 0 "$work/relayd" -pairs "$pairs" -mode fanin ${RELAYD_ARGS:-} 2>"$log" & ;;
    sipcar-fanin-noquality) ip netns exec "$relay" taskset -c 0 "$work/relayd" -pairs "$pairs" -mode fanin -no-quality ${RELAYD_ARGS:-} 2>"$log" & ;;
    sipcar-fanin-perport) ip netns exec "$relay" taskset -c 0 "$work/relayd" -pairs "$pairs" -mode fanin-perport ${RELAYD_ARGS:-} 2>"$log" & ;;
    sipcar-fallback) ip netns exec "$relay" taskset -c 0 "$work/relayd" -pairs "$pairs" -mode fallback ${RELAYD_ARGS:-} 2>"$log" & ;;
    sipcar-kernel) ip netns exec "$relay" taskset -c 0 "$work/relayd" -pairs "$pairs" -mode kernel ${RELAYD_ARGS:-} 2>"$log" & ;;
    kernel-nat)
      nat_off
      ip netns exec "$relay" nft -f "$nat_rules"
      ip netns exec "$relay" sysctl -qw net.ipv4.ip_forward=1
      # No process forwards: a placeholder stands in for the relay's (its CPU time is nil).
      ip netns exec "$relay" taskset -c 0 sleep 100000 2>"$log" & ;;
    cfwd) ip netns exec "$relay" taskset -c 0 "$work/cfwd" "$pairs" 2>"$log" & ;;
    rtpengine)
      ip netns exec "$relay" taskset -c 0 rtpengine --config-file=none --foreground --log-stderr --log-level=3 \
        --table=-1 --interface=in/198.18.0.1 --interface=out/198.51.100.1 --listen-ng=127.0.0.1:2223 \
        --port-min=20000 --port-max=29999 --num-threads=1 --timeout=600 --pidfile="$work/rtpengine.pid" 2>"$log" & ;;
    *) echo "unknown relay $name" >&2; exit 1 ;;
  esac
  relay_pid=$!
  local ready="calls"
  [ "$name" = rtpengine ] && ready="" # ngctl's ping waits for it
  [ "$name" = kernel-nat ] && ready=""
  for _ in $(seq 100); do
    if [ -z "$ready" ] || grep -qs "$ready" "$log"; then break; fi
    kill -0 "$relay_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  if [ "$name" = rtpengine ]; then
    pairs="$work/pairs-rtpengine"
    for _ in $(seq 50); do
      ip netns exec "$relay" "$work/ngctl" -calls "$max_calls" -o "$pairs" 2>"$work/ngctl.log" && break
      sleep 0.2
    done
    [ -s "$pairs" ] || { cat "$work/ngctl.log" "$log" >&2; exit 1; }
  fi
}

stop_relay() {
  kill "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  if [ -n "${VERBOSE:-}" ]; then grep -v ' level=INFO ' "$relay_log" | tail -n 5 >&2 || true; fi
  relay_pid=""
  nat_off
}

# wait_idle waits until CPU 0 is nearly idle: a relay drains what an overload left queued.
wait_idle() {
  local a b
  for _ in $(seq 40); do
    a=$(cpu0_busy); sleep 0.25; b=$(cpu0_busy)
    [ $((b - a)) -le $((clk_tck / 40 + 1)) ] && return 0
  done
}

# load NAME CALLS RATE SECONDS -> prints "recv_pps loss% p50 p99 p999 cpu0_ns_per_pkt
# relay_ns_per_pkt sent_pps". RATE 0: 50 packets/s per stream; a number: that many packets/s
# over all streams; "max": as fast as the generator can. Every SAMPLEth stream is timed, and
# loss is theirs: lost, or later than 200 ms (rtpload -deadline). A relay that queues an
# overload for seconds in its socket buffers delivers it all, but too late for any jitter
# buffer; recv_pps counts every arrival, however late.
load() {
  local name=$1 calls=$2 rate=$3 secs=$4 args=(-pairs "$pairs" -calls "$2" -duration "${4}s" -warmup 1s -json -sample "$sample")
  case $rate in
    0) ;;
    max) args+=(-flat) ;;
    *) args+=(-rate "$rate") ;;
  esac
  wait_idle
  ip netns exec "$gen" taskset -c 1 "$work/rtpload" "${args[@]}" >"$work/out.json" 2>"$work/rtpload.log" &
  local lp=$!
  sleep 1.1 # the warm-up
  local t0 c0 p0 n0
  snapshot; t0=$snap_t c0=$snap_c p0=$snap_p n0=$snap_n
  sleep "$secs"
  snapshot
  wait "$lp" || { cat "$work/rtpload.log" >&2; exit 1; }
  local j
  j=$(cat "$work/out.json")
  [ -n "${VERBOSE:-}" ] && echo "$name $calls rate=$rate: $j over $(((snap_t - t0) / 1000)) ms: cpu0 $((snap_c - c0)) relay $((snap_p - p0)) jiffies, with NAPI $(((snap_n - n0) / 1000000)) ms; drops so far: $(drops)" >&2
  # Per packet: the share of a second each consumed, over the packets of a second.
  awk -v dt="$((snap_t - t0))" -v c="$((snap_c - c0))" -v p="$((snap_p - p0))" -v hz="$clk_tck" -v n="$((snap_n - n0))" \
    -v pps="$(json_field "$j" received_pps)" -v loss="$(json_field "$j" late_or_lost_percent)" \
    -v p50="$(json_field "$j" p50_us)" -v p99="$(json_field "$j" p99_us)" -v p999="$(json_field "$j" p999_us)" \
    -v sent="$(json_field "$j" sent_pps)" \
    'BEGIN { r = pps * dt / 1e6; r = r > 0 ? r : 1; printf "%.0f %.3f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n", pps, loss, p50, p99, p999, c / hz * 1e9 / r, p / hz * 1e9 / r, sent, n / r }'
}

# flood NAME -> prints "recv_pps sent_pps relay_ns_per_pkt cpu0_ns_per_pkt": bench/flood sends
# the RTP of SAT_CALLS calls from CPU 1 as fast as a packet socket lets it, timing nothing (a
# kernel relay forwards more than rtpload's core can send and time), a second and a half of
# warm-up, then FLOOD_SECONDS measured; a program on the generator's interfaces counts and drops
# what comes back. The relay's CPU is taken over the middle of that window, per packet delivered.
flood() {
  local name=$1
  wait_idle
  ip netns exec "$gen" taskset -c 1 "$work/flood" -pairs "$pairs" -calls "$sat_calls" -a ga0 -b gb0 \
    -a-mac 02:00:00:00:01:01 -b-mac 02:00:00:00:02:01 -warmup 1.5s -duration "${flood_secs}s" >"$work/flood.json" 2>"$work/flood.log" &
  local fp=$!
  sleep 1.7
  local t0 c0 n0
  snapshot; t0=$snap_t c0=$snap_c n0=$snap_n
  sleep "$(awk -v s="$flood_secs" 'BEGIN { print s - 0.4 }')"
  snapshot
  wait "$fp" || { cat "$work/flood.log" >&2; exit 1; }
  local j
  j=$(cat "$work/flood.json")
  [ -n "${VERBOSE:-}" ] && echo "$name flood: $j; over $(((snap_t - t0) / 1000)) ms: cpu0 $((snap_c - c0)) jiffies, relay with NAPI $(((snap_n - n0) / 1000000)) ms" >&2
  awk -v dt="$((snap_t - t0))" -v c="$((snap_c - c0))" -v hz="$clk_tck" -v n="$((snap_n - n0))" \
    -v pps="$(json_field "$j" received_pps)" -v sent="$(json_field "$j" sent_pps)" \
    'BEGIN { r = pps * dt / 1e6; r = r > 0 ? r : 1; printf "%.0f %.0f %.0f %.0f\n", pps, sent, n / r, c / hz * 1e9 / r }'
}

# better A B KIND: prints the better of two results of load. Saturation ("sat"): the higher
# delivered rate; "ontime": the more packets on time. A load point (KIND: the offered packets/s): a run whose generator kept up with the
# offered rate (95%) over one that did not; of two that kept up, the lower loss, then the lower
# p99; of two that did not (their offered loads differ), the more packets on time.
better() {
  awk -v a="$1" -v b="$2" -v kind="$3" 'BEGIN {
    if (a == "") { print b; exit } if (b == "") { print a; exit }
    split(a, x, " "); split(b, y, " ")
    if (kind == "sat") { print (y[1] > x[1] ? b : a); exit }
    if (kind == "ontime") { print (y[8] * (100 - y[2]) > x[8] * (100 - x[2]) ? b : a); exit }
    kx = x[8] >= 0.95 * kind; ky = y[8] >= 0.95 * kind
    if (ky != kx) { print (ky ? b : a); exit }
    if (!kx) { print (y[8] * (100 - y[2]) > x[8] * (100 - x[2]) ? b : a); exit }
    if (y[2] < x[2] || (y[2] == x[2] && y[4] < x[4])) print b; else print a
  }'
}

# Each point is measured REPEAT times, the relays taking turns so that other work on the
# machine falls on all of them alike; the table shows each relay's best run of a point.
repeat=${REPEAT:-2}
[ "${1:-}" = "-q" ] && repeat=1
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
declare -A res
for ((rep = 1; rep <= repeat; rep++)); do
  for c in $calls_list; do
    for name in $relays; do
      start_relay "$name"
      res[$name,$c]=$(better "${res[$name,$c]:-}" "$(load "$name" "$c" 0 "$run_secs")" $((c * 100)))
      stop_relay
    done
  done
  for rate in $sat_rates; do
    for name in $relays; do
      start_relay "$name"
      r=$(load "$name" "$sat_calls" "$rate" "$sat_secs")
      stop_relay
      res[$name,sat]=$(better "${res[$name,sat]:-}" "$r" sat)
      res[$name,ontime]=$(better "${res[$name,ontime]:-}" "$r" ontime)
      read -r pps loss _ <<<"$r"
      if awk -v l="$loss" 'BEGIN { exit !(l <= 1) }'; then
        res[$name,sat1]=$(better "${res[$name,sat1]:-}" "$r" ontime)
      fi
    done
  done
  for name in $relays; do
    start_relay "$name"
    r=$(flood "$name")
    stop_relay
    res[$name,flood]=$(better "${res[$name,flood]:-}" "$r" sat)
  done
  echo "load after round $rep: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

# --- the table ------------------------------------------------------------------------------
ontime() { awk -v s="$1" -v l="$2" 'BEGIN { printf "%.0f", s * (100 - l) / 100 }'; } # sent/s loss%
printf '\nrelay on CPU 0, rtpload on CPU 1 (receive processing: %s); 172-byte RTP, 50 packets/s per direction per call, %ss per point;\n' "$steering" "$run_secs"
printf 'saturation: %s calls, offered rates stepped up, %ss each; latency and loss from every %sth stream\n' "$sat_calls" "$sat_secs" "$sample"
printf '%-20s | %10s %8s %6s | %10s %9s %9s %8s |' relay "flood pkt/s" "relay ns" "cpu0" "peak pkt/s" "on time" "<=1% loss" "relay ns"
for c in $calls_list; do printf ' %-65s |' "$c calls: sent/s loss on-time/s p50/p99/p99.9us ns/pkt cpu0/proc/relay"; done
printf '\n'
for name in $relays; do
  read -r fpps _ fown fcpu <<<"${res[$name,flood]}"
  printf '%-20s | %10s %8s %6s |' "$name" "$fpps" "$fown" "$fcpu"
  read -r pps _ <<<"${res[$name,sat]}"
  read -r _ loss _ _ _ _ _ sent own <<<"${res[$name,ontime]}"
  ot=$(ontime "$sent" "$loss")
  ot1=0
  if [ -n "${res[$name,sat1]:-}" ]; then
    read -r _ loss _ _ _ _ _ sent <<<"${res[$name,sat1]}"
    ot1=$(ontime "$sent" "$loss")
  fi
  printf ' %10s %9s %9s %8s |' "$pps" "$ot" "$ot1" "$own"
  for c in $calls_list; do
    read -r _ loss p50 p99 p999 cpu0 proc sent own <<<"${res[$name,$c]}"
    printf ' %6s %7s%% %6s %5s/%6s/%6s %6s/%5s/%5s |' "$sent" "$loss" "$(ontime "$sent" "$loss")" "$p50" "$p99" "$p999" "$cpu0" "$proc" "$own"
  done
  printf '\n'
done
printf '\nflood pkt/s: packets/s delivered while bench/flood sent the RTP of %s calls as fast as it could, %ss\n' "$sat_calls" "$flood_secs"
printf 'measured; relay ns and cpu0: the relay'"'"'s CPU time (as below) and CPU 0'"'"'s busy time per packet delivered.\n'
printf 'Loss: of the timed streams, packets lost or later than 200 ms (a jitter buffer drops them).\n'
printf 'peak pkt/s: the highest rate delivered over the offered rates (%s), however late;\n' "$sat_rates"
printf 'on time: the most packets/s delivered on time (sent/s less the loss); <=1%% loss: the same among the\n'
printf 'rates with at most 1%% loss; relay ns: the relay'"'"'s CPU time per packet delivered (its process'"'"'s\n'
printf 'threads and its veths'"'"' NAPI threads, where the kernel relays forward), at the on-time peak. Load\n'
printf 'points: packets/s the generator managed to send (offered: 100 per call), loss, packets/s on time,\n'
printf 'latency percentiles (us; 200000 = 200 ms or more), ns/pkt = busy time of CPU 0 (every process on\n'
printf 'it) / the relay process'"'"'s own (user+system) / the relay'"'"'s (as relay ns), per packet delivered.\n'
printf 'Best of %s runs per point, relays taking turns.\n' "$repeat"
