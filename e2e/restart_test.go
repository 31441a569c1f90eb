package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// socketHolder plays systemd's part in socket activation: it owns the scheduler's listening
// socket for the whole test and passes it to each scheduler process it starts as fd 3, with
// LISTEN_FDS=1 and LISTEN_PID set to that process's pid. While no scheduler runs, connections
// wait in the socket's backlog.
type socketHolder struct {
	file        *os.File
	addr        string
	metricsAddr string
	storageDir  string
}

func holdSocket(t *testing.T) *socketHolder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	// The duplicate in f keeps the socket open; the listener itself is not needed.
	l.Close()
	t.Cleanup(func() { f.Close() })
	return &socketHolder{
		file:        f,
		addr:        l.Addr().String(),
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		storageDir:  t.TempDir(),
	}
}

// start starts a scheduler on the held socket. The shell sets LISTEN_PID to its own pid and
// execs the scheduler, which keeps that pid, as systemd does for the process it starts.
func (h *socketHolder) start(t *testing.T, name string, args ...string) *scheduler {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	all := append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, filepath.Join(binDir, "scheduler"),
		"--listen=127.0.0.1:1", // ignored: the socket comes from fd 3
		"--metrics-listen=" + h.metricsAddr,
		"--storage-dir=" + h.storageDir,
	}, args...)
	cmd := exec.Command("/bin/sh", all...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{h.file}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := startCmd(t, name, cmd, f, logPath)
	s := &scheduler{process: p, addr: h.addr, metricsAddr: h.metricsAddr, storageDir: h.storageDir}
	waitHealthy(t, p, "http://"+h.metricsAddr+"/healthz", 30*time.Second)
	if !p.logContains(`"socket_activated":true`) {
		t.Fatalf("%s did not serve the socket passed as fd 3", name)
	}
	return s
}

// prober calls GetCapabilities on the scheduler every 50 ms with default gRPC client settings,
// recording failed calls and the longest call: the outage as a client sees it.
type prober struct {
	mu       sync.Mutex
	failures []string
	longest  time.Duration
	calls    int
	stop     context.CancelFunc
	done     chan struct{}
}

func startProber(t *testing.T, addr string) *prober {
	caps := repb.NewCapabilitiesClient(dial(t, addr))
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			start := time.Now()
			cctx, ccancel := context.WithTimeout(ctx, time.Minute)
			_, err := caps.GetCapabilities(cctx, &repb.GetCapabilitiesRequest{})
			ccancel()
			took := time.Since(start)
			p.mu.Lock()
			if err != nil && ctx.Err() == nil {
				p.failures = append(p.failures, err.Error())
			}
			p.calls++
			p.longest = max(p.longest, took)
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(p.finish)
	return p
}

func (p *prober) finish() {
	p.stop()
	<-p.done
}

// buildAsync runs a remote Bazel build with default retry flags in the background.
func buildAsync(w *workspace, addr string) <-chan buildResult {
	done := make(chan buildResult, 1)
	go func() {
		start := time.Now()
		out, err := w.run("build", "--incompatible_strict_action_env", "--color=no", "--curses=no",
			"--remote_executor=grpc://"+addr, "--remote_instance_name=restart", "--jobs=16", w.target)
		done <- buildResult{out, err, time.Since(start)}
	}()
	return done
}

type buildResult struct {
	out  string
	err  error
	took time.Duration
}

// waitLog waits until the process logged s.
func waitLog(t *testing.T, p *process, s string, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !p.logContains(s); {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %v", p.name, s, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBazelBuildSurvivesSchedulerRestarts runs remote builds with Bazel 4.2.3's default retry
// settings (5 retries from 100 ms: it gives up after about 3.1 s of UNAVAILABLE) while the
// scheduler is restarted on a socket held by a supervisor: once SIGKILLed mid-build and
// restarted 3.5 s later, once stopped with SIGTERM and restarted 2 s after it exited. Both
// builds succeed with the outputs of a local build, and a client probing the scheduler meanwhile
// sees no failed call.
func TestBazelBuildSurvivesSchedulerRestarts(t *testing.T) {
	bazel := bazel4(t)
	h := holdSocket(t)
	s := h.start(t, "scheduler-1")
	worker := startWorker(t, s, "w1", "--worker-concurrency=4")
	w := newWorkspace(t, bazel, 40)
	w.build("--spawn_strategy=local", "--genrule_strategy=local", "--jobs=8")
	local := w.outputs()

	// Kill and restart 3.5 s later.
	w.clean()
	w.slowDown(400 * time.Millisecond)
	probe := startProber(t, h.addr)
	done := buildAsync(w, h.addr)
	waitLog(t, worker, "Action finished", 90*time.Second)
	time.Sleep(500 * time.Millisecond)
	s.kill()
	killedAt := time.Now()
	t.Log("scheduler-1 killed with SIGKILL mid-build")
	time.Sleep(3500 * time.Millisecond)
	s = h.start(t, "scheduler-2")
	t.Logf("scheduler-2 healthy %v after the kill", time.Since(killedAt).Round(time.Millisecond))
	r := <-done
	if r.err != nil {
		t.Fatalf("build failed across a SIGKILL and a restart 3.5 s later: %v\n%s", r.err, tail(r.out, 60))
	}
	probe.finish()
	t.Logf("kill + restart: build took %v; probe: %d calls, longest %v, failures %v",
		r.took.Round(time.Millisecond), probe.calls, probe.longest.Round(time.Millisecond), probe.failures)
	if len(probe.failures) > 0 {
		t.Errorf("a client call failed during the restart: %v", probe.failures)
	}
	sameOutputs(t, local, w.outputs())

	// Graceful: SIGTERM, exit, restart 2 s later.
	w.clean()
	w.slowDown(401 * time.Millisecond)
	probe = startProber(t, h.addr)
	done = buildAsync(w, h.addr)
	waitLog(t, s.process, "Lease active", 90*time.Second)
	time.Sleep(time.Second)
	termAt := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Fatalf("scheduler exited with %v after SIGTERM, want status 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("scheduler still running 20 s after SIGTERM")
	}
	stopTook := time.Since(termAt)
	time.Sleep(2 * time.Second)
	s = h.start(t, "scheduler-3")
	t.Logf("SIGTERM → exit %v; scheduler-3 healthy %v after SIGTERM", stopTook.Round(time.Millisecond), time.Since(termAt).Round(time.Millisecond))
	r = <-done
	if r.err != nil {
		t.Fatalf("build failed across a graceful restart: %v\n%s", r.err, tail(r.out, 60))
	}
	probe.finish()
	t.Logf("graceful restart: build took %v; probe: %d calls, longest %v, failures %v",
		r.took.Round(time.Millisecond), probe.calls, probe.longest.Round(time.Millisecond), probe.failures)
	if len(probe.failures) > 0 {
		t.Errorf("a client call failed during the restart: %v", probe.failures)
	}
	if !strings.Contains(r.out, "Build completed successfully") {
		t.Fatalf("no success line:\n%s", tail(r.out, 20))
	}
	sameOutputs(t, local, w.outputs())
}
