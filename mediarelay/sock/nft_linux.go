package sock

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// RunNft runs nft with args, script on its standard input (none when empty), and returns
// what it printed. It waits for nft to exit; its error carries nft's own message. nft
// inherits CAP_NET_ADMIN when the process has it without being root (see nftAmbientCaps).
func RunNft(script string, args ...string) ([]byte, error) {
	cmd := exec.Command("nft", args...)
	if script != "" {
		cmd.Stdin = strings.NewReader(script)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if caps := nftAmbientCaps(); caps != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{AmbientCaps: caps}
	}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

// nftAmbientCaps returns the capabilities nft must inherit when sipcar runs as a user other
// than root with CAP_NET_ADMIN in its permitted set (the container image gives the binary
// file capabilities): an exec drops them otherwise, and nft would be refused. Root's
// children get every capability of the bounding set anyway; a process without the
// capability has none to pass on (nft then fails and says why).
func nftAmbientCaps() []uintptr {
	if os.Geteuid() == 0 {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil
	}
	if data[unix.CAP_NET_ADMIN/32].Permitted&(1<<(unix.CAP_NET_ADMIN%32)) == 0 {
		return nil
	}
	return []uintptr{unix.CAP_NET_ADMIN}
}
