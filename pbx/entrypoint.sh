#!/bin/sh
# Starts rtpengine (the media, on PBX_RTP_PORTS at PBX_ADDR, controlled on loopback; none of
# Debian's configuration file, which listens on ::1), waits until it takes commands, and then
# runs kamailio (SIP on PBX_ADDR:5060) in this shell's place. So the container lives as long as
# kamailio does, a stop (SIGTERM to kamailio, PID 1) takes rtpengine with it, and kamailio,
# rtpengine's parent from then on, exits if rtpengine dies (the restart policy then restarts
# both).
set -eu
addr=${PBX_ADDR:?set PBX_ADDR to the address of this container}
ports=${PBX_RTP_PORTS:-30000-30999}
rtpengine --config-file=none --foreground --log-stderr --log-level=5 --table=-1 --interface="$addr" \
	--listen-ng=127.0.0.1:2223 --port-min="${ports%-*}" --port-max="${ports#*-}" &
# kamailio marks an rtpengine that does not answer its first ping as down for a minute. The
# control socket, 127.0.0.1:2223, is 0100007F:08AF in /proc/net/udp.
i=0
until grep -q ' 0100007F:08AF ' /proc/net/udp; do
	i=$((i + 1))
	if [ "$i" -gt 100 ] || ! kill -0 $! 2>/dev/null; then
		echo "pbx: rtpengine did not start" >&2
		exit 1
	fi
	sleep 0.1
done
exec kamailio -DD -E -m 64 -M 8 -Y /tmp -P /tmp/kamailio.pid -f /etc/kamailio/pbx.cfg -l "udp:$addr:5060"
