#!/usr/bin/env bash
# sipcar demo: a PBX (kamailio, registrar and proxy) on the inside with phone B, sipcar in front
# of them as their sidecar, phone A on the internet. B registers at the PBX, A calls B through
# sipcar with audio, B echoes it; the demo prints sipcar's server map and session table
# mid-call and its counters after, then removes everything it made. Run as root on Debian with
# Go: apt-get install sip-tester kamailio curl.
#
#   inside  198.18.0.0/24:   sipcar 198.18.0.1   pbx 198.18.0.10 (kamailio)   phone B 198.18.0.30
#   public  198.51.100.0/24: sipcar 198.51.100.1   phone A 198.51.100.20
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
P=demo$$
work=$(mktemp -d)
ns() { ip netns exec "$P$1" "${@:2}"; }
cleanup() {
  for n in pbx car a b; do ip netns pids "$P$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for n in pbx car a b; do ip netns del "$P$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
for cmd in sipp kamailio curl; do command -v $cmd >/dev/null || { echo "demo: $cmd missing (apt-get install sip-tester kamailio curl)"; exit 1; }; done
(cd "$top" && go build -o "$work/sipcar" ./cmd/sipcar)

for n in pbx car a b; do ip netns add $P$n; ns $n ip link set lo up; ns $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
ip link add lan netns ${P}car type bridge
ip link add ppbx netns ${P}car type veth peer name eth0 netns ${P}pbx
ip link add pb netns ${P}car type veth peer name eth0 netns ${P}b
ip link add out0 netns ${P}car type veth peer name eth0 netns ${P}a
ns car ip link set ppbx master lan; ns car ip link set pb master lan
for l in lan ppbx pb out0; do ns car ip link set $l up; done
ns car ip addr add 198.18.0.1/24 dev lan
ns car ip addr add 198.51.100.1/24 dev out0
ns pbx ip addr add 198.18.0.10/24 dev eth0; ns pbx ip link set eth0 up
ns b ip addr add 198.18.0.30/24 dev eth0; ns b ip link set eth0 up
ns a ip addr add 198.51.100.20/24 dev eth0; ns a ip link set eth0 up

cd "$work"
mkdir -p pcap && cp /usr/share/sip-tester/g711a.pcap pcap/
ns pbx kamailio -f "$here/kamailio.cfg" -DD -E -Y "$work" -P "$work/kamailio.pid" >kamailio.log 2>&1 &
ns car env SIPCAR_UPSTREAM=sip:198.18.0.10:5060 SIPCAR_PUBLIC_ADDR=198.51.100.1 SIPCAR_INSIDE_ADDR=198.18.0.1 \
  SIPCAR_INSIDE_NETS=198.18.0.0/24 "$work/sipcar" >sipcar.log 2>&1 &
for _ in $(seq 50); do ns car curl -sf http://127.0.0.1:9060/readyz >/dev/null && break; sleep 0.1; done

echo "== phone B (198.18.0.30, inside) registers 2002 at the PBX"
ns b sipp -sf "$here/register.xml" -s 2002 198.18.0.10:5060 -i 198.18.0.30 -p 5060 -m 1 -nostdin >reg.log 2>&1 \
  || { echo "registration failed"; cat reg.log; exit 1; }
ns b sipp -sn uas -i 198.18.0.30 -p 5060 -rtp_echo -nostdin >uas.log 2>&1 &
sleep 0.5
echo "== phone A (198.51.100.20, internet) calls 2002 through sipcar with audio (pcap/g711a.pcap)"
ns a sipp -sf "$here/call.xml" -s 2002 198.51.100.1:5060 -i 198.51.100.20 -p 5060 -m 1 -nostdin -trace_stat -stf a.csv >uac.log 2>&1 &
uac=$!
sleep 4
echo "== mid-call: sipcar show servermap"
ns car env SIPCAR_ADMIN_ADDR=127.0.0.1:9060 "$work/sipcar" show servermap
echo "== mid-call: sipcar show sessions"
ns car env SIPCAR_ADMIN_ADDR=127.0.0.1:9060 "$work/sipcar" show sessions
sleep 4
echo "== just before the hang-up: media counters"
ns car env SIPCAR_ADMIN_ADDR=127.0.0.1:9060 "$work/sipcar" show sessions
wait $uac && result=ok || result=failed
echo "== after the call (phone A's sipp: $result): media bindings released, signaling bindings live on"
ns car curl -s http://127.0.0.1:9060/metrics | grep -E '^sipcar_(pinhole_(calls|bindings)|sip_messages_(received|forwarded)_total|media_(packets_forwarded_total|streams))'
[ "$result" = ok ] || { echo "--- sipcar log"; cat sipcar.log; exit 1; }
