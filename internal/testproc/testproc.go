// Package testproc holds what tests that run third-party servers as processes share: a free
// loopback address to give them, and stopping them by PID.
package testproc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// Listening reports whether process pid holds a TCP socket listening on addr (an IPv4
// 127.0.0.1:PORT), from /proc/net/tcp and /proc/PID/fd. A test that dials a server's address to
// see it up can reach another process that took the port first (a free port handed to two
// tests); this checks the server it started is the one listening.
func Listening(pid int, addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host).To4()
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil {
		return false
	}
	// /proc/net/tcp writes the address as the 32-bit word in host (little-endian) order.
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], p)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return false
	}
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == local && f[3] == "0A" { // 0A: TCP_LISTEN
			inodes["socket:["+f[9]+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return false
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && inodes[target] {
			return true
		}
	}
	return false
}

// Freeze stops process pid with SIGSTOP and returns once every one of its threads is stopped
// (state T in /proc/PID/task/TID/stat). kill returns before the stop takes hold: a thread that
// is running then can still answer a request for a moment, which a test that expects silence
// at once would see. It fails the test when the process does not stop within 5 s.
func Freeze(t testing.TB, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("stopping process %d: %v", pid, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !Stopped(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d has threads still running 5 s after SIGSTOP", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// Stopped reports whether every thread of process pid is stopped by a signal (state T), from
// /proc/PID/task. A process that is gone or cannot be read is not stopped.
func Stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		// "TID (COMM) STATE ...": COMM may hold spaces and parentheses, so the state follows
		// the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
			return false
		}
	}
	return true
}
