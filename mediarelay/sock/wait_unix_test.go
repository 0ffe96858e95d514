//go:build unix

package sock

import (
	"errors"
	"net"
	"testing"
	"time"
)

// WaitReadable returns once a datagram waits, without reading it, and with net.ErrClosed once
// the socket is closed.
func TestWaitReadable(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- WaitReadable(c) }()
	select {
	case err := <-done:
		t.Fatalf("WaitReadable returned %v before anything arrived", err)
	case <-time.After(50 * time.Millisecond):
	}
	tx, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	if _, err := tx.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitReadable = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReadable did not return when a datagram arrived")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 8)
	if n, _, err := c.ReadFromUDP(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("the datagram was not left to read: %q, %v", buf[:n], err)
	}
	go func() { done <- WaitReadable(c) }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("WaitReadable after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReadable did not return when the socket closed")
	}
}
