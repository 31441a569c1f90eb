// Package clustertest starts the real engines the scheduler replica tests need, on 127.0.0.1
// and free ports: etcd (Debian's etcd-server, data in a temporary directory) and HAProxy (TCP
// mode, in the foreground, configuration in a temporary directory). Both are installed by
// scripts/install-test-deps.sh. Every process is stopped by the test that started it, by PID.
package clustertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/internal/testproc"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Process is an engine process started by a test.
type Process struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// start runs bin with args, output to logPath, in a process group of its own; the test stops
// it when it ends.
func start(t testing.TB, name, bin, logPath string, args ...string) *Process {
	t.Helper()
	p := spawn(t, name, bin, logPath, args...)
	t.Cleanup(p.Stop)
	return p
}

// spawn is start without the clean-up: the caller stops the process.
func spawn(t testing.TB, name, bin, logPath string, args ...string) *Process {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &Process{t: t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return p
}

// Log returns what the process wrote so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Stop stops the process by its PID (SIGCONT in case it was paused, SIGTERM, then SIGKILL after
// 5 s) and waits for it. Stopping a stopped process does nothing.
func (p *Process) Stop() {
	if p.cmd == nil {
		return
	}
	testproc.Stop(p.cmd, p.done)
	p.cmd = nil
}

// Pause freezes the process (SIGSTOP) and returns once every thread of it is stopped.
func (p *Process) Pause() { testproc.Freeze(p.t, p.cmd.Process.Pid) }

// Resume lets a paused process go on (SIGCONT).
func (p *Process) Resume() { syscall.Kill(p.cmd.Process.Pid, syscall.SIGCONT) }

// FreeAddr returns a free 127.0.0.1:PORT.
func FreeAddr(t testing.TB) string { t.Helper(); return testproc.FreeAddr(t) }

// lookPath finds a Debian-installed engine, failing the test (skipping a benchmark) if it is
// missing.
func lookPath(t testing.TB, name string) string {
	t.Helper()
	for _, p := range []string{name, "/usr/sbin/" + name, "/usr/bin/" + name} {
		if q, err := exec.LookPath(p); err == nil {
			return q
		}
	}
	msg := fmt.Sprintf("%s is not installed (run scripts/install-test-deps.sh)", name)
	if _, ok := t.(*testing.B); ok {
		t.Skip(msg)
	}
	t.Fatal(msg)
	return ""
}

// Etcd is a one-member etcd started by a test.
type Etcd struct {
	*Process
	// Endpoint is the client URL, http://127.0.0.1:PORT.
	Endpoint string
	bin, dir string
	args     []string
}

// StartEtcd starts a one-member etcd with its data in a temporary directory and waits until it
// answers (about a second).
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	bin := lookPath(t, "etcd")
	dir := t.TempDir()
	client, peer := "http://"+FreeAddr(t), "http://"+FreeAddr(t)
	args := []string{"--name", "test", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test=" + peer, "--initial-cluster-state", "new",
		"--log-level", "warn"}
	p := spawn(t, "etcd", bin, filepath.Join(dir, "etcd.log"), args...)
	e := &Etcd{Process: p, Endpoint: client, bin: bin, dir: dir, args: args}
	// One clean-up, registered before the test's replicas', stops whichever process runs then
	// (Restart replaces it), after the replicas stopped.
	t.Cleanup(func() { e.Process.Stop() })
	e.waitReady(t)
	return e
}

// Restart stops etcd (SIGTERM, by PID), keeps it down for down, starts it again on the same
// ports and data directory, and waits until it answers. It returns when etcd answered again.
func (e *Etcd) Restart(t testing.TB, down time.Duration) time.Time {
	t.Helper()
	e.Stop()
	time.Sleep(down)
	e.Process = spawn(t, "etcd", e.bin, filepath.Join(e.dir, "etcd.log"), e.args...)
	e.waitReady(t)
	return time.Now()
}

// waitReady waits until e answers a read (about a second after a start).
func (e *Etcd) waitReady(t testing.TB) {
	t.Helper()
	p := e.Process
	client := e.Endpoint
	cli := e.Client(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "probe")
		cancel()
		if err == nil {
			if !testproc.Listening(p.cmd.Process.Pid, strings.TrimPrefix(client, "http://")) {
				t.Fatalf("another process answers on %s, not the etcd this test started (a port handed out as free was taken)", client)
			}
			return
		}
		select {
		case <-p.done:
			t.Fatalf("etcd exited at start:\n%s", p.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd does not answer on %s: %v\n%s", client, err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Client returns an etcd client of e, closed when the test ends.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(cluster.EtcdClientConfig([]string{e.Endpoint}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// HAProxy is an HAProxy in TCP mode balancing one address over backends.
type HAProxy struct {
	*Process
	// Addr is the 127.0.0.1:PORT clients connect to.
	Addr string
}

// Backend is one server behind HAProxy.
type Backend struct {
	// Addr is the host:port connections go to.
	Addr string
	// Check is the host:port of the backend's HTTP server, whose /readyz HAProxy checks (200:
	// up); empty: a TCP connect check of Addr.
	Check string
}

// StartHAProxy starts HAProxy in TCP mode, in the foreground, balancing connections to Addr
// round-robin over backends, with health checks every 200 ms (an HTTP GET /readyz with a 300 ms
// timeout when every Backend.Check is set, so that a stopped process, whose kernel still
// accepts connections, is taken out; TCP connects otherwise), closing the connections of a backend
// marked down, and redispatching a connection whose backend refuses it.
func StartHAProxy(t testing.TB, backends []Backend) *HAProxy {
	t.Helper()
	bin := lookPath(t, "haproxy")
	dir := t.TempDir()
	addr := FreeAddr(t)
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 4096
defaults
  mode tcp
  timeout connect 1s
  timeout check 300ms
  timeout client 10m
  timeout server 10m
  retries 3
  option redispatch
frontend grpc
  bind %s
  default_backend replicas
backend replicas
  balance roundrobin
  default-server inter 200ms fall 2 rise 2 on-marked-down shutdown-sessions
`, addr)
	httpCheck := len(backends) > 0
	for _, be := range backends {
		httpCheck = httpCheck && be.Check != ""
	}
	if httpCheck {
		b.WriteString("  option httpchk\n  http-check send meth GET uri /readyz\n  http-check expect status 200\n")
	}
	for i, be := range backends {
		if !httpCheck {
			fmt.Fprintf(&b, "  server r%d %s check\n", i, be.Addr)
			continue
		}
		host, port, err := net.SplitHostPort(be.Check)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  server r%d %s check addr %s port %s\n", i, be.Addr, host, port)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "haproxy", bin, filepath.Join(dir, "haproxy.log"), "-db", "-f", cfg)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The process this test started must be the one listening: a dial could reach another
		// process that took the port first.
		if testproc.Listening(p.cmd.Process.Pid, addr) {
			return &HAProxy{Process: p, Addr: addr}
		}
		select {
		case <-p.done:
			t.Fatalf("haproxy exited at start:\n%s", p.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy does not accept connections on %s:\n%s", addr, p.Log())
		}
	}
}
