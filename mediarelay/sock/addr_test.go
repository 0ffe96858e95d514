package sock

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// naiveChecksum is RFC 768's checksum written the obvious way, 16 bits at a time, over the
// pseudo-header and the datagram (its checksum field zero).
func naiveChecksum(src, dst netip.Addr, udp []byte) uint16 {
	var data []byte
	data = append(data, src.AsSlice()...)
	data = append(data, dst.AsSlice()...)
	data = append(data, 0, 17, byte(len(udp)>>8), byte(len(udp)))
	data = append(data, udp...)
	if len(data)%2 == 1 {
		data = append(data, 0)
	}
	var sum uint32
	for i := 0; i < len(data); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(data[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func TestPutUDPHeader(t *testing.T) {
	for _, tt := range []struct{ src, dst string }{
		{"198.51.100.1:20002", "198.51.100.2:40000"},
		{"[::ffff:198.51.100.1]:20002", "198.51.100.2:40000"}, // mapped: an IPv4 datagram
		{"[2001:db8:b::1]:20002", "[2001:db8:b::2]:40000"},
	} {
		for _, n := range []int{0, 1, 12, 15, 16, 171, 172, 1400} {
			var src, dst Addr
			src.Set(netip.MustParseAddrPort(tt.src))
			dst.Set(netip.MustParseAddrPort(tt.dst))
			dgram := make([]byte, UDPHeaderLen+n)
			for i := range n {
				dgram[UDPHeaderLen+i] = byte(i*7 + 3)
			}
			PutUDPHeader(dgram, &src, &dst)
			if binary.BigEndian.Uint16(dgram[0:]) != 20002 || binary.BigEndian.Uint16(dgram[2:]) != 40000 || int(binary.BigEndian.Uint16(dgram[4:])) != len(dgram) {
				t.Errorf("%s, %d bytes: UDP header % x", tt.src, n, dgram[:8])
			}
			got := binary.BigEndian.Uint16(dgram[6:])
			zeroed := append([]byte(nil), dgram...)
			zeroed[6], zeroed[7] = 0, 0
			want := naiveChecksum(src.AddrPort().Addr(), dst.AddrPort().Addr(), zeroed)
			if want == 0 {
				want = 0xffff
			}
			if got != want {
				t.Errorf("%s, %d bytes: checksum %#04x, want %#04x", tt.src, n, got, want)
			}
		}
	}
}

// An IPv4 header with a right checksum (0xb861): the checksum over the whole header is 0, and
// with the field zeroed it is the field's value.
func TestChecksum(t *testing.T) {
	hdr := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61,
		0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	if got := Checksum(hdr); got != 0 {
		t.Errorf("checksum over a valid header = %#04x, want 0", got)
	}
	zeroed := append([]byte(nil), hdr...)
	zeroed[10], zeroed[11] = 0, 0
	if got := Checksum(zeroed); got != 0xb861 {
		t.Errorf("checksum = %#04x, want 0xb861", got)
	}
	if got := Checksum([]byte{0x01}); got != ^uint16(0x0100) {
		t.Errorf("odd byte: checksum = %#04x, want %#04x (padded with zero)", got, ^uint16(0x0100))
	}
}

func TestAddr(t *testing.T) {
	for _, tt := range []struct {
		in   netip.AddrPort
		want netip.AddrPort
		v4   bool
	}{
		{netip.MustParseAddrPort("198.51.100.1:20002"), netip.MustParseAddrPort("198.51.100.1:20002"), true},
		{netip.MustParseAddrPort("[::ffff:198.51.100.1]:5"), netip.MustParseAddrPort("198.51.100.1:5"), true},
		{netip.MustParseAddrPort("[2001:db8:b::1]:65535"), netip.MustParseAddrPort("[2001:db8:b::1]:65535"), false},
		{netip.AddrPort{}, netip.AddrPort{}, false},
	} {
		var a Addr
		a.Set(tt.in)
		if got := a.AddrPort(); got != tt.want || a.IsValid() != tt.want.IsValid() || a.Is4() != tt.v4 {
			t.Errorf("Set(%v): AddrPort %v, IsValid %v, Is4 %v; want %v, %v, %v", tt.in, got, a.IsValid(), a.Is4(),
				tt.want, tt.want.IsValid(), tt.v4)
		}
	}
	var a Addr
	a.Set(netip.MustParseAddrPort("198.51.100.1:1"))
	a.Set(netip.AddrPort{})
	if a != (Addr{}) {
		t.Errorf("Set of no address left %+v", a)
	}
}
