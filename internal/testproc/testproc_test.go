package testproc

import (
	"net"
	"os"
	"testing"
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
