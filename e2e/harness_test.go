package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binDir holds the binaries built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "buildfleet-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		if !testingShort() {
			cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/scheduler", "./cmd/worker")
			cmd.Dir = ".."
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "building binaries:", err)
				return 1
			}
		}
		return m.Run()
	}()
	os.RemoveAll(dir)
	os.Exit(code)
}

func testingShort() bool {
	for _, a := range os.Args {
		if a == "-test.short" || a == "-test.short=true" {
			return true
		}
	}
	return false
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is a child process started by a test and stopped by it.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan error
}

// start runs binary with args, logging to a file in the test's temp dir. The process is
// stopped (SIGTERM, then SIGKILL after 20 s) when the test ends.
func start(t testing.TB, name, binary string, env []string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return startCmd(t, name, cmd, f, logPath)
}

// startCmd starts cmd, whose output goes to f (at logPath), as start does.
func startCmd(t testing.TB, name string, cmd *exec.Cmd, f *os.File, logPath string) *process {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	t.Cleanup(func() {
		p.stop(t, 20*time.Second)
		if t.Failed() {
			p.dumpLog(t)
		}
	})
	return p
}

// stop sends SIGTERM and waits up to grace, then kills the process group.
func (p *process) stop(t testing.TB, grace time.Duration) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(grace):
		t.Logf("%s did not exit %v after SIGTERM; killing it", p.name, grace)
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		err := <-p.done
		p.done <- err
		return err
	}
}

// kill sends SIGKILL to the process group and waits for it.
func (p *process) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

func (p *process) dumpLog(t testing.TB) {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	t.Logf("last lines of %s log:\n%s", p.name, strings.Join(lines, "\n"))
}

// logContains reports whether the process's log holds s.
func (p *process) logContains(s string) bool {
	f, err := os.Open(p.log)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return true
		}
	}
	return false
}

// waitHealthy polls url until it answers 200, failing the test after timeout.
func waitHealthy(t testing.TB, p *process, url string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("%s exited before it was healthy: %v", p.name, err)
		case <-ctx.Done():
			t.Fatalf("%s not healthy at %s after %v", p.name, url, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// scheduler is a running scheduler process.
type scheduler struct {
	*process
	addr        string
	metricsAddr string
	storageDir  string
}

// startScheduler starts the scheduler on free loopback ports with its storage in dir (a fresh
// temp dir when empty).
func startScheduler(t testing.TB, dir string, args ...string) *scheduler {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s := &scheduler{
		addr:        fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		storageDir:  dir,
	}
	all := append([]string{
		"--listen=" + s.addr,
		"--metrics-listen=" + s.metricsAddr,
		"--storage-dir=" + dir,
	}, args...)
	s.process = start(t, "scheduler", filepath.Join(binDir, "scheduler"), nil, all...)
	waitHealthy(t, s.process, "http://"+s.metricsAddr+"/healthz", 30*time.Second)
	return s
}

// startWorker starts a worker process against the scheduler, with its cache in a temp dir.
func startWorker(t testing.TB, s *scheduler, name string, args ...string) *process {
	t.Helper()
	cache := t.TempDir()
	all := append([]string{
		"--scheduler=grpc://" + s.addr,
		"--cache-directory=" + filepath.Join(cache, "cache"),
		"--append-only-caches-base-path=" + filepath.Join(cache, "append-only"),
		"--worker-id=" + name,
		"--cloud=none",
	}, args...)
	return start(t, name, filepath.Join(binDir, "worker"), nil, all...)
}

// sigterm is the signal the tests send to ask a process to stop.
var sigterm = syscall.SIGTERM
