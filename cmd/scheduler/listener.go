package main

import (
	"fmt"
	"net"

	"github.com/coreos/go-systemd/v22/activation"
)

// grpcListener returns the listener the gRPC server serves on. When the process was started by
// socket activation (systemd's LISTEN_FDS and LISTEN_PID naming this process; the socket is
// fd 3), it serves the inherited socket and reports activated; the socket then outlives the
// process, so clients that connect while no scheduler runs wait in the kernel's backlog instead
// of being refused. Otherwise it listens on addr (--listen). Exactly one inherited socket is
// accepted: the scheduler has one gRPC port.
func grpcListener(addr string) (lis net.Listener, activated bool, err error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: %w", err)
	}
	switch {
	case len(ls) == 1 && ls[0] != nil:
		return ls[0], true, nil
	case len(ls) > 0:
		for _, l := range ls {
			if l != nil {
				l.Close()
			}
		}
		return nil, false, fmt.Errorf("socket activation passed %d sockets; the scheduler takes exactly one stream socket (its gRPC port)", len(ls))
	}
	lis, err = net.Listen("tcp", addr)
	if err != nil {
		return nil, false, fmt.Errorf("--listen: %w", err)
	}
	return lis, false, nil
}
