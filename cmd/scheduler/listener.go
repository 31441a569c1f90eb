package main

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/coreos/go-systemd/v22/activation"
)

// grpcListener returns the listener the gRPC server serves on. When the process was started by
// socket activation (systemd's LISTEN_FDS and LISTEN_PID naming this process; the socket is
// fd 3), it serves the inherited socket and reports activated; the socket then outlives the
// process, so clients that connect while no scheduler runs wait in the kernel's backlog instead
// of being refused. Otherwise it listens on addr (--listen). Exactly one inherited socket is
// accepted: the scheduler has one gRPC port.
//
// LISTEN_FDS set with a LISTEN_PID that is not this process is an error: the sockets were passed
// to another process (typically a wrapper shell that runs the scheduler as its child instead of
// exec'ing it), which keeps them open while nobody accepts, so clients would hang instead of
// being refused.
func grpcListener(addr string) (lis net.Listener, activated bool, err error) {
	if err := checkListenPID(os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID"), os.Getpid()); err != nil {
		return nil, false, err
	}
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

// checkListenPID refuses socket-activation variables meant for another process: LISTEN_FDS
// set while LISTEN_PID is not pid.
func checkListenPID(fds, listenPID string, pid int) error {
	if fds == "" {
		return nil
	}
	if p, err := strconv.Atoi(listenPID); err == nil && p == pid {
		return nil
	}
	return fmt.Errorf("socket activation: LISTEN_FDS=%s is set but LISTEN_PID=%q is not this process (%d): "+
		"the socket was passed to another process, which holds it while nobody accepts, so clients would hang. "+
		"A wrapper between the supervisor and the scheduler must exec it with LISTEN_PID set to the scheduler's own PID "+
		"(e.g. sh -c 'LISTEN_PID=$$ exec scheduler ...'), or unset LISTEN_FDS to serve --listen", fds, listenPID, pid)
}
