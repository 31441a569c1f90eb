package main_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExecWorkerRegistersWithScheduler installs the real worker with the bootstrapper, which
// execs it; the worker registers with a running scheduler (seen in its metrics), and SIGTERM
// to the bootstrapper's pid (now the worker's) drains it to a clean exit.
func TestExecWorkerRegistersWithScheduler(t *testing.T) {
	skipShort(t)
	if payloadName != "./cmd/worker" {
		t.Skipf("needs the real worker; serving %s", payloadName)
	}
	schedulerBin := filepath.Join(buildDir, "scheduler")
	if out, err := goBuild(schedulerBin, "../scheduler"); err != nil {
		t.Skipf("./cmd/scheduler does not build here: %s", firstLine(string(out)))
	}
	dir := t.TempDir()
	grpcAddr, metricsAddr := freeAddr(t), freeAddr(t)
	sched := exec.Command(schedulerBin, "--listen="+grpcAddr, "--metrics-listen="+metricsAddr,
		"--storage-dir="+filepath.Join(dir, "storage"))
	var schedLog bytes.Buffer
	sched.Stdout, sched.Stderr = &schedLog, &schedLog
	if err := sched.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sched.Process.Signal(syscall.SIGTERM)
		sched.Wait()
		t.Logf("scheduler log:\n%s", schedLog.String())
	})

	srv := serve(t, payload, false)
	worker := exec.Command(bootstrapBin, "--worker-url="+srv.URL+"/worker", "--worker-sha256="+sum(payload),
		"--install-path="+filepath.Join(dir, "bin", "worker"), "--packages=none", "--exec",
		"--scheduler=grpc://"+grpcAddr, "--cloud=none", "--drain-timeout=10s",
		"--cache-directory="+filepath.Join(dir, "cache"), "--append-only-caches-base-path="+filepath.Join(dir, "caches"),
		"--", "--worker-id=bootstrap-e2e", "--worker-concurrency=1")
	var workerLog bytes.Buffer
	worker.Stdout, worker.Stderr = &workerLog, &workerLog
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- worker.Wait() }()
	t.Cleanup(func() {
		worker.Process.Kill()
		<-exited
		t.Logf("bootstrap/worker log:\n%s", workerLog.String())
	})

	// Poll the scheduler's metrics (a real process: there is no clock to advance).
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n := gauge(metricsAddr, `buildfleet_scheduler_workers{state="serving"}`); n >= 1 {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("worker exited before registering: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker did not register with the scheduler within 30s")
		}
	}
	worker.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("worker exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not exit within 30s of SIGTERM")
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// gauge returns the value of the sample named exactly series at addr's /metrics, or -1.
func gauge(addr, series string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4<<20))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}
