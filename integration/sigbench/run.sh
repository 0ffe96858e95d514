#!/usr/bin/env bash
# Signaling throughput: calls per second (INVITE/180/200/ACK/BYE with SDP) through sipcar
# (upstream mode, UDP, media pairs allocated for every call) beside Kamailio as a stateless
# forwarder of the same scenario, in one run on this machine. The relay under test is pinned to
# CPU 1, the two sipp instances to CPU 0.
#
#   sudo integration/sigbench/run.sh [calls] [rate...]
#
# For each rate it reports the calls that completed, failed, and the completed calls per second.
set -euo pipefail
calls=${1:-3000}; shift || true
rates=${*:-"200 400 800 1600"}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
P=sigb$$
work=$(mktemp -d)
cleanup() {
  pkill -f "$work" 2>/dev/null || true
  for n in phone mid pbx; do ip netns del $P$n 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
for cmd in sipp kamailio taskset; do command -v $cmd >/dev/null || { echo "missing $cmd (apt-get install sip-tester kamailio util-linux)"; exit 1; }; done
(cd "$top" && go build -o "$work/sipcar" ./cmd/sipcar)

for n in phone mid pbx; do ip netns add $P$n; ip -n $P$n link set lo up; ip netns exec $P$n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
ip link add in0 netns ${P}mid type veth peer name eth0 netns ${P}pbx
ip link add out0 netns ${P}mid type veth peer name eth0 netns ${P}phone
ip -n ${P}mid addr add 198.18.0.1/24 dev in0; ip -n ${P}mid link set in0 up
ip -n ${P}mid addr add 198.51.100.1/24 dev out0; ip -n ${P}mid link set out0 up
ip -n ${P}pbx addr add 198.18.0.10/24 dev eth0; ip -n ${P}pbx link set eth0 up
ip -n ${P}phone addr add 198.51.100.20/24 dev eth0; ip -n ${P}phone link set eth0 up

cd "$work"
ip netns exec ${P}pbx taskset -c 0 sipp -sn uas -i 198.18.0.10 -p 5060 -bg >/dev/null 2>&1 || true  # -bg exits 99

# run RATE: one sipp run of $calls calls at RATE calls/s; prints "completed failed cps", cps being
# completed calls per second of wall time (from the first INVITE to the last BYE's 200).
run() {
  local rate=$1 t0 t1
  t0=$(date +%s.%N)
  ip netns exec ${P}phone taskset -c 0 sipp -sn uac 198.51.100.1:5060 -i 198.51.100.20 -p 5070 -m "$calls" -r "$rate" \
      -l 100000 -nostdin -timeout 120 -recv_timeout 5000 -trace_stat -stf stat.csv >/dev/null 2>&1 || true
  t1=$(date +%s.%N)
  local ok fail
  ok=$(tail -1 stat.csv | awk -F';' '{print $16}')    # SuccessfulCall(C)
  fail=$(tail -1 stat.csv | awk -F';' '{print $18}')  # FailedCall(C)
  rm -f stat.csv
  awk -v ok="$ok" -v f="$fail" -v a="$t0" -v b="$t1" 'BEGIN{printf "%d %d %.0f\n", ok, f, ok/(b-a)}'
}

declare -A result
measure() {
  local name=$1
  for rate in $rates; do
    result[$name,$rate]=$(run "$rate")
  done
}

ulimit -n "$(ulimit -Hn)"
ip netns exec ${P}mid taskset -c 1 env SIPCAR_UPSTREAM=sip:198.18.0.10:5060 SIPCAR_PUBLIC_ADDR=198.51.100.1 \
  SIPCAR_INSIDE_ADDR=198.18.0.1 SIPCAR_INSIDE_NETS=198.18.0.0/24 SIPCAR_MEDIA_MODE=fallback SIPCAR_LOG_LEVEL=error \
  SIPCAR_MAX_MESSAGE_RATE=0 SIPCAR_MAX_CALLS_PER_SOURCE=-1 SIPCAR_LISTEN_TCP= "$work/sipcar" >"$work/sipcar.log" 2>&1 &
sleep 1
measure sipcar
pkill -f "$work/sipcar"; sleep 1

ip netns exec ${P}mid taskset -c 1 kamailio -f "$here/kamailio.cfg" -DD -E -n 1 -Y "$work" -P "$work/kamailio.pid" >"$work/kamailio.log" 2>&1 &
sleep 1
measure kamailio

printf '%-8s | %-28s | %-28s | %s\n' "rate" "sipcar (done/failed, cps)" "kamailio stateless (done/failed, cps)" "ratio"
for rate in $rates; do
  read -r so sf sc <<<"${result[sipcar,$rate]}"
  read -r ko kf kc <<<"${result[kamailio,$rate]}"
  ratio=$(awk -v a="$sc" -v b="$kc" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }')
  printf '%-8s | %6s/%-6s %8s cps     | %6s/%-6s %8s cps     | %s\n' "$rate" "$so" "$sf" "$sc" "$ko" "$kf" "$kc" "$ratio"
done
