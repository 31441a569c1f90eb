package cloud_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

// These tests run the real amazon-ec2-metadata-mock, installed by scripts/install-test-deps.sh.

// mockBinary finds ec2-metadata-mock or skips the test.
func mockBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping the amazon-ec2-metadata-mock integration test in -short mode")
	}
	dirs := []string{os.Getenv("BUILDFLEET_TOOLS_DIR"), filepath.Join("..", ".tools")}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, "bin", "ec2-metadata-mock")
		if _, err := os.Stat(p); err == nil {
			abs, err := filepath.Abs(p)
			if err != nil {
				t.Fatal(err)
			}
			return abs
		}
	}
	if p, err := exec.LookPath("ec2-metadata-mock"); err == nil {
		return p
	}
	t.Skip("ec2-metadata-mock not installed (run scripts/install-test-deps.sh); skipping the real IMDS test")
	return ""
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// imdsMock is a running ec2-metadata-mock.
type imdsMock struct {
	cmd  *exec.Cmd
	addr string
	out  *lockedBuffer
	done chan struct{}
}

// startMock runs ec2-metadata-mock on addr ("" for a free loopback port) with args after the
// listen flags, waits until it accepts connections, and kills it (by PID) when the test ends.
func startMock(t *testing.T, bin, addr string, args ...string) *imdsMock {
	t.Helper()
	if addr == "" {
		addr = closedAddr(t)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	m := &imdsMock{addr: addr, out: &lockedBuffer{}, done: make(chan struct{})}
	m.cmd = exec.Command(bin, append([]string{"-n", host, "-p", port}, args...)...)
	m.cmd.Dir = home
	m.cmd.Env = append(os.Environ(), "HOME="+home)
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("starting ec2-metadata-mock: %v", err)
	}
	go func() {
		m.cmd.Wait()
		close(m.done)
	}()
	t.Cleanup(func() {
		m.kill(t)
		if t.Failed() {
			t.Logf("ec2-metadata-mock output:\n%s", m.out)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return m
		}
		select {
		case <-m.done:
			t.Fatalf("ec2-metadata-mock exited: %s", m.out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ec2-metadata-mock did not listen on %s: %s", addr, m.out)
		}
	}
}

func (m *imdsMock) endpoint() string { return "http://" + m.addr }

// kill stops the mock by its PID and waits for it to exit.
func (m *imdsMock) kill(t *testing.T) {
	select {
	case <-m.done:
		return
	default:
	}
	if err := m.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("killing ec2-metadata-mock (pid %d): %v", m.cmd.Process.Pid, err)
	}
	<-m.done
}

// waitLog waits until the log holds at least n lines containing s.
func waitLog(t *testing.T, logs *logBuffer, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for logs.count(s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("log has %d lines with %q, want %d:\n%s", logs.count(s), s, n, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAWSSourceWithMetadataMockSpotNotice(t *testing.T) {
	bin := mockBinary(t)
	launched := time.Now()
	// The mock's delay counts from its start: 3 s leaves room for a slow first poll.
	m := startMock(t, bin, "", "-I", "spot", "-d", "3", "--action", "terminate")
	log, _ := newLog(t)
	clk := newPollClock()
	src := cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: m.endpoint(), PollInterval: 100 * time.Millisecond,
		RebalanceDrains: true}, clk, log)
	ch, _, _ := watching(t, src)

	var spot, rebalance *cloud.Notice
	for spot == nil {
		n := recv(t, ch)
		switch n.Kind {
		case cloud.SpotInterruption:
			spot = &n
		case cloud.Rebalance:
			if rebalance != nil {
				t.Fatalf("rebalance sent twice: %+v", n)
			}
			rebalance = &n
		default:
			t.Fatalf("unexpected notice %+v", n)
		}
	}
	received := time.Now()
	if spot.Source != "aws" || spot.Reason != "terminate" || spot.Soft {
		t.Fatalf("spot notice = %+v", *spot)
	}
	// The source polled through the mock's 404s before the notice appeared.
	if !strings.Contains(m.out.String(), "notFoundResponse") {
		t.Fatalf("the notice was there from the first poll: the mock's delay did not apply")
	}
	// The mock's time is its trigger (start + 3 s) plus two minutes, to the second.
	lo, hi := launched.Add(2*time.Minute-time.Second), received.Add(2*time.Minute+time.Second)
	if spot.Deadline.Before(lo) || spot.Deadline.After(hi) {
		t.Fatalf("spot deadline %v not within [%v, %v]", spot.Deadline, lo, hi)
	}
	// The mock also serves a rebalance recommendation from the start.
	if rebalance == nil {
		select {
		case n := <-ch:
			rebalance = &n
		case <-time.After(5 * time.Second):
		}
	}
	if rebalance == nil || rebalance.Kind != cloud.Rebalance || !rebalance.Soft {
		t.Fatalf("rebalance notice = %+v", rebalance)
	}
	// Polling goes on without repeating either notice, although the mock stamps the spot
	// notice's time anew on every read.
	clk.waitPolls(t, 15)
	noNotice(t, ch)
}

func TestAWSSourceWithMetadataMockScaleIn(t *testing.T) {
	bin := mockBinary(t)
	m := startMock(t, bin, "", "-I", "asglifecycle", "--asg-termination-delay-sec", "2")
	log, _ := newLog(t)
	clk := newPollClock()
	src := cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: m.endpoint(), PollInterval: 100 * time.Millisecond,
		ScaleInDeadline: 90 * time.Second}, clk, log)
	before := time.Now()
	ch, _, _ := watching(t, src)
	n := recv(t, ch)
	after := time.Now()
	if n.Source != "aws" || n.Kind != cloud.ScaleIn || n.Reason != "target lifecycle state Terminated" {
		t.Fatalf("notice = %+v", n)
	}
	if n.Deadline.Before(before.Add(90*time.Second)) || n.Deadline.After(after.Add(90*time.Second)) {
		t.Fatalf("deadline %v is not 90 s after the notice (seen between %v and %v)", n.Deadline, before, after)
	}
	// Polling goes on without repeating the notice.
	clk.waitPolls(t, 5)
	noNotice(t, ch)
}

func TestAWSSourceWithMetadataMockThatDisappears(t *testing.T) {
	bin := mockBinary(t)
	// No notice for ten minutes, no rebalance recommendation either.
	m := startMock(t, bin, "", "-I", "spot", "-d", "600", "--rebalance-delay-sec", "600")
	log, logs := newLog(t)
	src := cloud.NewAWSSource(cloud.AWSSourceConfig{Endpoint: m.endpoint(), PollInterval: 100 * time.Millisecond,
		MaxBackoff: 300 * time.Millisecond, RebalanceDrains: true}, clock.System, log)
	ch, _, done := watching(t, src)
	waitLog(t, logs, "Metadata service reachable", 1)

	m.kill(t)
	waitLog(t, logs, "Metadata service stopped answering; still watching", 1)
	waitLog(t, logs, "Metadata service unreachable", 3)
	noNotice(t, ch)
	select {
	case <-done:
		t.Fatal("Watch returned when IMDS went away")
	default:
	}

	// IMDS comes back (same address) with a notice at once: it is found and sent.
	startMock(t, bin, m.addr, "-I", "spot", "-d", "0", "--action", "stop", "--rebalance-delay-sec", "600")
	n := recv(t, ch)
	if n.Kind != cloud.SpotInterruption || n.Reason != "stop" {
		t.Fatalf("notice = %+v", n)
	}
	waitLog(t, logs, "Metadata service reachable again", 1)
	if strings.Count(logs.String(), strconv.Quote("level")+":"+strconv.Quote("error")) != 0 {
		t.Fatalf("errors logged:\n%s", logs)
	}
}
