package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// Socket-activation variables meant for another process (a wrapper shell that runs the
// scheduler as its child) are refused with an error that says what to do; without LISTEN_FDS,
// or with LISTEN_PID naming this process, they are accepted.
func TestListenPIDOfAnotherProcessIsRefused(t *testing.T) {
	for _, c := range []struct {
		fds, pid string
		ok       bool
	}{
		{"", "", true},
		{"", "1", true},
		{"1", "4242", true},
		{"1", "4243", false},
		{"1", "", false},
		{"1", "x", false},
	} {
		err := checkListenPID(c.fds, c.pid, 4242)
		if (err == nil) != c.ok {
			t.Errorf("LISTEN_FDS=%q LISTEN_PID=%q: err %v, want ok=%v", c.fds, c.pid, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "LISTEN_PID=$$ exec") {
			t.Errorf("error %q does not say how to pass the socket on", err)
		}
	}

	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getppid()))
	if lis, _, err := grpcListener("127.0.0.1:0"); err == nil {
		lis.Close()
		t.Fatal("grpcListener served --listen although the socket was passed to another process")
	}
}
