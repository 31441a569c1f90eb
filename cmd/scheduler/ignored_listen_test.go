package main

import (
	"bufio"
	"context"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/internal/flagenv"
)

// --listen set on the command line or as BUILDFLEET_LISTEN to another address than the socket
// systemd passed is reported as ignored; unset, or naming the same address, it is not.
func TestIgnoredListen(t *testing.T) {
	for _, c := range []struct {
		args    []string
		env     string // BUILDFLEET_LISTEN
		served  string
		ignored string // "" when not reported
	}{
		{nil, "", "127.0.0.1:8980", ""},
		{nil, "", "0.0.0.0:9000", ""},
		{nil, "0.0.0.0:8980", "127.0.0.1:8980", "0.0.0.0:8980"},
		{[]string{"--listen=10.0.0.1:8980"}, "", "127.0.0.1:8980", "10.0.0.1:8980"},
		{[]string{"--listen=127.0.0.1:8981"}, "", "127.0.0.1:8980", "127.0.0.1:8981"},
		{nil, "127.0.0.1:8980", "127.0.0.1:8980", ""},
		{[]string{"--listen=127.0.0.1:8980"}, "", "127.0.0.1:8980", ""},
		{nil, "[::ffff:127.0.0.1]:8980", "127.0.0.1:8980", ""},
		{nil, ":8980", "[::]:8980", ""},
		{nil, "0.0.0.0:8980", "[::]:8980", ""},
		{nil, ":8980", "127.0.0.1:8980", ":8980"},
		{nil, "localhost:8980", "127.0.0.1:8980", "localhost:8980"},
	} {
		fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
		fs.String("listen", "127.0.0.1:8980", "")
		getenv := func(k string) string {
			if k == "BUILDFLEET_LISTEN" {
				return c.env
			}
			return ""
		}
		if err := flagenv.Parse(fs, "BUILDFLEET", c.args, getenv); err != nil {
			t.Fatal(err)
		}
		addr, ignored := ignoredListen(fs, getenv, c.served)
		if ignored != (c.ignored != "") || addr != c.ignored {
			t.Errorf("args %v BUILDFLEET_LISTEN=%q socket %s: ignoredListen = %q, %v; want %q", c.args, c.env, c.served, addr, ignored, c.ignored)
		}
	}
}

// A socket-activated scheduler (the socket passed as fd 3, as systemd does) serves that socket
// and logs a warning naming BUILDFLEET_LISTEN when that is set to another address, and no warning
// when it names the socket's address (the packaged scheduler.env of earlier releases).
func TestSocketActivatedSchedulerWarnsAboutIgnoredListen(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the scheduler; skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "scheduler")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range []struct {
		env      func(socket string) string // BUILDFLEET_LISTEN for the socket's address
		wantWarn bool
	}{
		{func(string) string { return "0.0.0.0:8980" }, true},
		{func(socket string) string { return socket }, false},
	} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		socket := lis.Addr().String()
		f, err := lis.(*net.TCPListener).File()
		lis.Close()
		if err != nil {
			t.Fatal(err)
		}
		listen := c.env(socket)
		lines := runActivated(t, bin, f, "BUILDFLEET_LISTEN="+listen)
		f.Close()
		warned := strings.Contains(lines, `"ignored_listen":"`+listen+`"`) && strings.Contains(lines, "systemctl edit buildfleet-scheduler.socket")
		if warned != c.wantWarn || !strings.Contains(lines, `"listen":"`+socket+`","socket_activated":true`) {
			t.Errorf("BUILDFLEET_LISTEN=%s, socket %s: warned %v, want %v; log:\n%s", listen, socket, warned, c.wantWarn, lines)
		}
	}
}

// runActivated runs the scheduler with the listening socket f as fd 3 and LISTEN_FDS=1 (LISTEN_PID
// set by a shell that execs it), returns its log up to "scheduler serving", and stops it.
func runActivated(t *testing.T, bin string, f *os.File, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin,
		"--storage-dir="+t.TempDir(), "--metrics-listen=", "--log-format=json")
	cmd.Env = append(append(os.Environ(), "LISTEN_FDS=1"), env...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "scheduler serving") {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	io.Copy(io.Discard, stderr)
	if err := cmd.Wait(); err != nil {
		t.Errorf("scheduler: %v\n%s", err, log.String())
	}
	return log.String()
}
