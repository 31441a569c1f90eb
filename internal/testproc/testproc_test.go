package testproc

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !Listening(os.Getpid(), l.Addr().String()) {
		t.Fatal("own listener not found")
	}
	other := FreeAddr(t)
	if Listening(os.Getpid(), other) {
		t.Fatal("a free port reported listening")
	}
	if Listening(1, l.Addr().String()) {
		t.Fatal("pid 1 reported holding this process's listener")
	}
}

func TestFreeze(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer Stop(cmd, done)
	pid := cmd.Process.Pid
	if Stopped(pid) {
		t.Fatal("a running process reported stopped")
	}
	Freeze(t, pid)
	if !Stopped(pid) {
		t.Fatal("a frozen process reported running")
	}
	syscall.Kill(pid, syscall.SIGCONT)
	for deadline := time.Now().Add(5 * time.Second); Stopped(pid); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still stopped 5 s after SIGCONT")
		}
	}
	if Stopped(1 << 30) {
		t.Fatal("a process that does not exist reported stopped")
	}
}
