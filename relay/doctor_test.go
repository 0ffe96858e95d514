package relay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/relay/policy"
	"github.com/sipcar/sipcar/rewrite"
)

// A call through the loopback relay where only the phone sends media: the doctor names the
// PBX's leg silent since the answer and the phone's ok, in progress and after the BYE; an INVITE
// refused for want of ports is diagnosed as such.
func TestDoctorOneWayAudio(t *testing.T) {
	b := newLoopbed(t, nil)
	phone := addrOf(b.phone)
	phoneRTP := listenRTP(t, "127.0.0.3")
	pbxRTP := listenRTP(t, "127.0.0.2")
	b.send(b.phone, b.sip, withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKd1\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: doc1\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\n", b.sip.Port(), phone, phone), sdp("127.0.0.3", int(addrOf(phoneRTP).Port()))))
	m, src := b.recv(b.pbx)
	via := m.(*sip.Request).Via().Value()
	b.send(b.pbx, src, withBody(fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: doc1\nCSeq: 1 INVITE\nContact: <sip:100@%s>\n", via, addrOf(b.pbx)), sdp("127.0.0.2", int(addrOf(pbxRTP).Port()))))
	ok, _ := b.recv(b.phone)
	phoneSideRTP := sdpAddr(t, string(ok.Body()))
	pkt := append([]byte{0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7}, bytes.Repeat([]byte{1}, 160)...)
	for i := range 5 {
		pkt[3] = byte(i + 1)
		if _, err := phoneRTP.WriteToUDPAddrPort(pkt, phoneSideRTP); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2048)
	for i := range 5 {
		_ = pbxRTP.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, _, err := pbxRTP.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("the phone's RTP packet %d did not reach the PBX: %v", i+1, err)
		}
	}
	legs := func(d Diagnosis) map[string]LegDiagnosis {
		m := map[string]LegDiagnosis{}
		for _, l := range d.Legs {
			m[l.Side] = l
		}
		return m
	}
	// The call log notes a message before sipcar sends it: once the phone has the 200, the call
	// is answered (noted after the send, a fast answer could overtake its INVITE's note and be
	// lost, and the call stay "ringing").
	ds := b.r.Diagnose("doc1")
	if len(ds) != 1 || ds[0].State != "in progress" {
		t.Fatalf("diagnoses %+v", ds)
	}
	l := legs(ds[0])
	if l["inside"].Cause != CauseNoMedia || !strings.Contains(l["inside"].Line, "no RTP from this party") {
		t.Errorf("inside leg: %+v, want no-media", l["inside"])
	}
	if l["outside"].Cause != CauseOK || l["outside"].Party != phone.String() {
		t.Errorf("outside leg: %+v, want ok from %v", l["outside"], phone)
	}

	b.send(b.phone, b.sip, fmt.Sprintf("BYE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKd2\nFrom: <sip:200@127.0.0.1>;tag=p1\n"+
		"To: <sip:100@127.0.0.1>;tag=x1\nCall-ID: doc1\nCSeq: 2 BYE\nMax-Forwards: 70\nContent-Length: 0\n\n", b.sip.Port(), phone))
	m, src = b.recv(b.pbx)
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: doc1\nCSeq: 2 BYE\nContent-Length: 0\n\n", m.(*sip.Request).Via().Value()))
	b.recv(b.phone)
	ds = b.r.Diagnose("doc1")
	if len(ds) != 1 || !strings.HasPrefix(ds[0].State, "ended") || ds[0].Ended == nil {
		t.Fatalf("after BYE: %+v", ds)
	}
	l = legs(ds[0])
	if l["inside"].Cause != CauseNoMedia || l["outside"].Cause != CauseOK || !strings.Contains(l["outside"].Line, "5 RTP packets") {
		t.Errorf("ended call: %+v", ds[0].Legs)
	}
	var text bytes.Buffer
	if err := ds[0].WriteText(&text); err != nil || strings.Count(text.String(), "\n") < 3 {
		t.Errorf("text: %q %v", text.String(), err)
	}
}

// Each cause the doctor names, from the evidence that shows it.
func TestDoctorCauses(t *testing.T) {
	r := &Relay{cfg: Config{InsideNets: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}}}
	ap := netip.MustParseAddrPort
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	phone, pbx := ap("203.0.113.7:5060"), ap("198.18.0.10:5060")
	stream := func(rtp string, dir rewrite.Direction, disp rewrite.Disposition) rewrite.Stream {
		return rewrite.Stream{Media: "audio", Proto: "RTP/AVP", RTP: ap(rtp), Direction: dir, Disposition: disp}
	}
	offer := func(body string, st rewrite.Stream) messageNote {
		return messageNote{at: t0, from: pinhole.Outside, what: "INVITE", src: phone, via: ap("10.0.0.5:5060"),
			contact: ap("10.0.0.5:5060"), sdp: []byte(body), streams: []rewrite.Stream{st}}
	}
	answer := func(body string, st rewrite.Stream) messageNote {
		return messageNote{at: t0.Add(time.Second), from: pinhole.Inside, what: "200 INVITE", src: pbx, via: pbx,
			sdp: []byte(body), streams: []rewrite.Stream{st}}
	}
	body := func(addr, proto, fmts string, extra ...string) string {
		return "v=0\r\no=- 1 1 IN IP4 " + addr + "\r\ns=-\r\nc=IN IP4 " + addr + "\r\nt=0 0\r\nm=audio 4000 " + proto + " " + fmts + "\r\n" +
			strings.Join(extra, "")
	}
	plainOffer := offer(body("10.0.0.5", "RTP/AVP", "0 8 101"), stream("10.0.0.5:4000", rewrite.SendRecv, rewrite.Relayed))
	plainAnswer := answer(body("198.18.0.10", "RTP/AVP", "0 101"), stream("198.18.0.10:6000", rewrite.SendRecv, rewrite.Relayed))
	media := func(insidePkts, outsidePkts uint64, outsidePeer string) []streamNote {
		s := streamNote{spec: mediarelay.StreamSpec{A: mediarelay.LegSpec{RTP: ap("198.18.0.1:20000"), Peer: ap("198.18.0.10:6000")},
			B: mediarelay.LegSpec{RTP: ap("198.51.100.1:20002"), Peer: ap("10.0.0.5:4000")}}}
		s.stats.A.RTP.Packets, s.stats.B.RTP.Packets = insidePkts, outsidePkts
		s.stats.A.LastPacket, s.stats.B.LastPacket = t0.Add(59*time.Second), t0.Add(59*time.Second)
		if insidePkts > 0 {
			s.stats.A.Peer = ap("198.18.0.10:6000")
		}
		if outsidePeer != "" {
			s.stats.B.Peer = ap(outsidePeer)
		}
		return []streamNote{s}
	}
	ended := t0.Add(time.Minute)
	cases := []struct {
		name          string
		rec           callRecord
		inside, outer string // the cause each leg's line names
		want          string // text the line names
	}{
		{"ok", callRecord{notes: []messageNote{plainOffer, plainAnswer}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseOK, CauseOK, "3000 RTP packets"},
		{"no media from the phone behind NAT", callRecord{notes: []messageNote{plainOffer, plainAnswer}, streams: media(3000, 0, "")},
			CauseOK, CauseNoMedia, "through a NAT (Via 10.0.0.5:5060, packets from 203.0.113.7:5060)"},
		{"media from another address", callRecord{notes: []messageNote{plainOffer, plainAnswer}, streams: media(3000, 3000, "203.0.113.7:31000")},
			CauseOK, CauseMediaOtherSource, "media comes from 203.0.113.7:31000, not the 10.0.0.5:4000"},
		{"ports exhausted", callRecord{refusals: []refusalNote{{at: t0, code: 503, metric: "no-ports", warning: "no free relay port"}}},
			CausePortsExhausted, CausePortsExhausted, "503"},
		{"codec mismatch", callRecord{notes: []messageNote{plainOffer,
			answer(body("198.18.0.10", "RTP/AVP", "18"), stream("198.18.0.10:6000", rewrite.SendRecv, rewrite.Relayed))}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseCodecMismatch, CauseCodecMismatch, "payload types 18"},
		{"telephone-event renumbered", callRecord{notes: []messageNote{
			offer(body("10.0.0.5", "RTP/AVP", "0 101", "a=rtpmap:101 telephone-event/8000\r\n"), stream("10.0.0.5:4000", rewrite.SendRecv, rewrite.Relayed)),
			answer(body("198.18.0.10", "RTP/AVP", "0 96", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:96 Telephone-Event/8000\r\n"),
				stream("198.18.0.10:6000", rewrite.SendRecv, rewrite.Relayed))}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseOK, CauseOK, "3000 RTP packets"},
		{"a static codec renumbered, another added", callRecord{notes: []messageNote{
			offer(body("10.0.0.5", "RTP/AVP", "8"), stream("10.0.0.5:4000", rewrite.SendRecv, rewrite.Relayed)),
			answer(body("198.18.0.10", "RTP/AVP", "97 98", "a=rtpmap:97 PCMA/8000\r\na=rtpmap:98 opus/48000/2\r\n"),
				stream("198.18.0.10:6000", rewrite.SendRecv, rewrite.Relayed))}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseCodecMismatch, CauseCodecMismatch, "has payload types 98 the offer"},
		{"SRTP one leg", callRecord{notes: []messageNote{
			offer(body("10.0.0.5", "RTP/SAVP", "0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"),
				stream("10.0.0.5:4000", rewrite.SendRecv, rewrite.Relayed)), plainAnswer}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseSRTPOneLeg, CauseSRTPOneLeg, "RTP/SAVP with a=crypto"},
		{"SRTP offered best effort, declined", callRecord{notes: []messageNote{
			offer(body("10.0.0.5", "RTP/AVP", "0 8 101", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"),
				stream("10.0.0.5:4000", rewrite.SendRecv, rewrite.Relayed)), plainAnswer}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseOK, CauseOK, "3000 RTP packets"},
		{"SRTP answered to a plain offer", callRecord{notes: []messageNote{plainOffer,
			answer(body("198.18.0.10", "RTP/AVP", "0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"),
				stream("198.18.0.10:6000", rewrite.SendRecv, rewrite.Relayed))}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseSRTPOneLeg, CauseSRTPOneLeg, "this leg's SDP says RTP/AVP with a=crypto, the other's RTP/AVP"},
		{"hold", callRecord{notes: []messageNote{plainOffer,
			answer(body("198.18.0.10", "RTP/AVP", "0", "a=sendonly\r\n"), stream("198.18.0.10:6000", rewrite.SendOnly, rewrite.Relayed))}, streams: media(3000, 0, "")},
			CauseHold, CauseHold, "a=sendonly"},
		{"ALG", callRecord{notes: []messageNote{{at: t0, from: pinhole.Outside, what: "INVITE", src: phone, via: phone, contact: phone,
			sdp: []byte(body("10.0.0.5", "RTP/AVP", "0 8 101")), streams: []rewrite.Stream{stream("10.0.0.5:4000", rewrite.SendRecv, rewrite.Relayed)}}, plainAnswer},
			streams: media(3000, 0, "")}, CauseOK, CauseALG, "rewrote the Via of its INVITE to 203.0.113.7:5060"},
		{"PBX with a wrong external address", callRecord{notes: []messageNote{plainOffer,
			answer(body("203.0.113.50", "RTP/AVP", "0"), stream("203.0.113.50:6000", rewrite.SendRecv, rewrite.Relayed))}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseWrongSDPAddress, CauseOK, "names media address 203.0.113.50:6000"},
		{"PBX sending from its own address, not its SDP's", callRecord{notes: []messageNote{plainOffer,
			answer(body("203.0.113.50", "RTP/AVP", "0"), stream("203.0.113.50:6000", rewrite.SendRecv, rewrite.Relayed))}, streams: media(3000, 3000, "10.0.0.5:4000")},
			CauseWrongSDPAddress, CauseOK, "media comes from 198.18.0.10:6000, not the 203.0.113.50:6000 its SDP named: the party sends from another address than its SDP names"},
		{"unanchored private address", callRecord{notes: []messageNote{
			offer(body("10.0.0.5", "TCP/MSRP", "*"), rewrite.Stream{Media: "message", Proto: "TCP/MSRP", RTP: ap("10.0.0.5:4000"), Disposition: rewrite.NotRelayed}),
			answer(body("198.18.0.10", "TCP/MSRP", "*"), rewrite.Stream{Media: "message", Proto: "TCP/MSRP", RTP: ap("198.18.0.10:6000"), Disposition: rewrite.NotRelayed})}},
			// The PBX's 198.18.0.10 is no more reachable from the internet than the phone's 10.0.0.5.
			CauseUnanchored, CauseUnanchored, "private address 10.0.0.5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.rec.callID, tc.rec.started, tc.rec.answered, tc.rec.ended, tc.rec.endReason = "c", t0, t0.Add(time.Second), ended, "call ended"
			if len(tc.rec.refusals) > 0 {
				tc.rec.answered = time.Time{}
			}
			d := r.diagnose(tc.rec, ended)
			var in, out LegDiagnosis
			for _, l := range d.Legs {
				if l.Side == "inside" {
					in = l
				} else {
					out = l
				}
			}
			if in.Cause != tc.inside || out.Cause != tc.outer {
				t.Fatalf("causes inside %q, outside %q; want %q, %q\n%+v\n%+v", in.Cause, out.Cause, tc.inside, tc.outer, in, out)
			}
			all := strings.Join(append(append([]string{in.Line, out.Line}, in.Also...), out.Also...), "\n")
			if !strings.Contains(all, tc.want) {
				t.Errorf("lines do not say %q:\n%s", tc.want, all)
			}
		})
	}
}

// A call the operator's policy refuses is diagnosed as refused, naming the party sipcar
// answered; a silent rule's drops stay out of the call log.
func TestDoctorPolicyRefusal(t *testing.T) {
	rules, err := policy.Parse("deny src=127.0.0.4/32 silent; deny src=127.0.0.3/32")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(rules, policy.Config{Default: policy.Permit})
	if err != nil {
		t.Fatal(err)
	}
	b := newLoopbed(t, func(c *Config) { c.Policy = pol })
	scanner := listenRTP(t, "127.0.0.4")
	invite := func(from *net.UDPConn, id string) string {
		return withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s\n"+
			"From: <sip:200@127.0.0.1>;tag=%s\nTo: <sip:100@127.0.0.1>\nCall-ID: %s\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
			"Contact: <sip:200@%s>\n", b.sip.Port(), addrOf(from), id, id, id, addrOf(from)), sdp("127.0.0.3", 4000))
	}
	b.send(b.phone, b.sip, invite(b.phone, "denied1"))
	if m, _ := b.recv(b.phone); m.(*sip.Response).StatusCode != 403 {
		t.Fatalf("denied INVITE answered %v, want 403", m)
	}
	ds := b.r.Diagnose("denied1")
	if len(ds) != 1 || !strings.HasPrefix(ds[0].State, "ended (refused by sipcar: 403 policy)") {
		t.Fatalf("diagnoses %+v", ds)
	}
	for _, l := range ds[0].Legs {
		if l.Cause != CauseRefused || !strings.Contains(l.Line, "sipcar answered the INVITE 403 (denied by policy rule 2: deny src=127.0.0.3/32)") {
			t.Errorf("%s leg: %+v", l.Side, l)
		}
		if l.Side == "outside" && l.Party != addrOf(b.phone).String() {
			t.Errorf("outside party %q, want the phone %v", l.Party, addrOf(b.phone))
		}
	}
	b.send(scanner, b.sip, invite(scanner, "scan1"))
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && pol.Snapshot().Rules[0].Hits == 0; {
		time.Sleep(10 * time.Millisecond)
	}
	if pol.Snapshot().Rules[0].Hits != 1 {
		t.Fatal("the silent rule did not see the scanner's INVITE")
	}
	if ds := b.r.Diagnose("scan1"); len(ds) != 0 {
		t.Errorf("a silently dropped INVITE is in the call log: %+v", ds)
	}
}

func TestUnroutable(t *testing.T) {
	for a, want := range map[string]bool{
		"10.1.2.3": true, "172.16.0.1": true, "192.168.1.1": true, "100.64.0.1": true, "127.0.0.1": true,
		"169.254.1.1": true, "198.18.0.10": true, "198.19.255.254": true, "fd00::1": true, "fe80::1": true,
		"198.17.255.255": false, "198.20.0.1": false, "203.0.113.5": false, "198.51.100.1": false, "8.8.8.8": false,
		"2001:db8::1": false, "::ffff:198.18.0.1": true,
	} {
		if got := unroutable(netip.MustParseAddr(a)); got != want {
			t.Errorf("unroutable(%s) = %v, want %v", a, got, want)
		}
	}
}

// The call log forgets ended calls after an hour and beyond its cap, and keeps the rest.
func TestCallLogForgets(t *testing.T) {
	l := newCallLog(DefaultCallHistory)
	t0 := time.Now()
	for i := range DefaultCallHistory + 5 {
		key := fmt.Sprint("c", i)
		l.calls[key] = &callRecord{key: key, callID: key, started: t0}
		l.callEnded(key, pinhole.ReasonCallEnded, t0)
	}
	if n := len(l.calls); n != DefaultCallHistory {
		t.Errorf("%d ended calls kept, want the cap %d", n, DefaultCallHistory)
	}
	if len(l.find("c0")) != 0 || len(l.find(fmt.Sprint("c", DefaultCallHistory+4))) != 1 {
		t.Error("the oldest was kept or the newest forgotten")
	}
	l.calls["live"] = &callRecord{key: "live", callID: "live", started: t0}
	l.sweep(t0.Add(callLogKeep / 2))
	if n := len(l.calls); n != DefaultCallHistory+1 {
		t.Errorf("after half an hour: %d calls, want every one", n)
	}
	l.sweep(t0.Add(callLogKeep + time.Minute))
	if n := len(l.calls); n != 0 {
		t.Errorf("%d calls kept after an hour of nothing", n)
	}
}
