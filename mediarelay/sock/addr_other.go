//go:build !linux

package sock

// sysName: outside Linux an Addr needs no kernel encoding (the portable media relay sends
// with net.UDPConn).
type sysName struct{}

func (*sysName) set(*Addr) {}
