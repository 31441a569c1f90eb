// Package testproc holds what tests that run third-party servers as processes share: a free
// loopback address to give them, and stopping them by PID.
package testproc

import (
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// FreeAddr returns a free 127.0.0.1:PORT. It fails the test when no port can be had.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Stop stops cmd's process by its PID: SIGCONT (in case it was paused), SIGTERM, then SIGKILL
// to its process group after 5 s. done must be closed once cmd.Wait has returned; Stop waits
// for it. A process that already exited is left alone.
func Stop(cmd *exec.Cmd, done <-chan struct{}) {
	pid := cmd.Process.Pid
	select {
	case <-done:
		return
	default:
	}
	syscall.Kill(pid, syscall.SIGCONT)
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
}
