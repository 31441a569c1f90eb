package bootstrap_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/bootstrap"
	"github.com/buildfleet/buildfleet/internal/clock"
)

// recordingClock records every wait asked of a fake clock.
type recordingClock struct {
	*clock.Fake
	mu    sync.Mutex
	waits []time.Duration
}

func (c *recordingClock) NewTimer(d time.Duration) (clock.Timer, <-chan time.Time) {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	return c.Fake.NewTimer(d)
}

func newInstaller(t *testing.T, clk clock.Clock, policy bootstrap.RetryPolicy) *bootstrap.BinaryInstaller {
	return &bootstrap.BinaryInstaller{
		Source: httpSource(), Clock: clk, Retry: policy,
		Steps: &bootstrap.StepLog{Logger: zerolog.New(zerolog.NewTestWriter(t))},
	}
}

// install runs Install in the background, advancing the fake clock by each wait the installer
// asks for, and returns the result.
func install(t *testing.T, clk *recordingClock, inst *bootstrap.BinaryInstaller, url, sum, dest string) (bool, error) {
	t.Helper()
	type result struct {
		changed bool
		err     error
	}
	done := make(chan result, 1)
	armed := clk.Armed()
	go func() {
		changed, err := inst.Install(context.Background(), url, false, sum, dest)
		done <- result{changed, err}
	}()
	for {
		select {
		case r := <-done:
			return r.changed, r.err
		case <-armed:
			armed = clk.Armed()
			clk.mu.Lock()
			wait := clk.waits[len(clk.waits)-1]
			clk.mu.Unlock()
			clk.Advance(wait)
		case <-time.After(10 * time.Second):
			t.Fatal("installer neither finished nor waited on the clock")
		}
	}
}

func TestRetriesWithExponentialBackoff(t *testing.T) {
	body := []byte("the worker binary")
	srv := newBinaryServer(t, body)
	srv.handle = func(n int32, w http.ResponseWriter, r *http.Request) bool {
		if n <= 3 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return true
		}
		return false
	}
	clk := &recordingClock{Fake: clock.NewFake(testEpoch)}
	dest := filepath.Join(t.TempDir(), "worker")
	changed, err := install(t, clk, newInstaller(t, clk, bootstrap.RetryPolicy{Attempts: 5, Initial: time.Second, Max: 3 * time.Second}),
		srv.workerURL(), sha(body), dest)
	if err != nil || !changed {
		t.Fatalf("Install = %v, %v", changed, err)
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}; !reflect.DeepEqual(clk.waits, want) {
		t.Fatalf("waits %v, want %v", clk.waits, want)
	}
	assertFile(t, dest, body, 0o755)
}

func TestInterruptedDownloadIsRetried(t *testing.T) {
	body := []byte(strings.Repeat("worker bytes ", 1000))
	srv := newBinaryServer(t, body)
	srv.handle = func(n int32, w http.ResponseWriter, r *http.Request) bool {
		if n > 1 {
			return false
		}
		// Announce the whole body, send half, and drop the connection.
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return true
		}
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
		buf.Write(body[:len(body)/2])
		buf.Flush()
		conn.Close()
		return true
	}
	clk := &recordingClock{Fake: clock.NewFake(testEpoch)}
	dest := filepath.Join(t.TempDir(), "worker")
	if _, err := install(t, clk, newInstaller(t, clk, bootstrap.DefaultRetryPolicy), srv.workerURL(), sha(body), dest); err != nil {
		t.Fatal(err)
	}
	if n := srv.requests.Load(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
	assertFile(t, dest, body, 0o755)
	assertOnly(t, filepath.Dir(dest), "worker")
}

func TestNotFoundIsNotRetried(t *testing.T) {
	srv := newBinaryServer(t, nil)
	srv.handle = func(n int32, w http.ResponseWriter, r *http.Request) bool {
		http.NotFound(w, r)
		return true
	}
	clk := &recordingClock{Fake: clock.NewFake(testEpoch)}
	dest := filepath.Join(t.TempDir(), "worker")
	_, err := install(t, clk, newInstaller(t, clk, bootstrap.DefaultRetryPolicy), srv.workerURL(), sha([]byte("x")), dest)
	if err == nil || !bootstrap.IsPermanent(err) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("got %v, want a permanent 404", err)
	}
	if n := srv.requests.Load(); n != 1 || len(clk.waits) != 0 {
		t.Fatalf("%d requests and waits %v, want 1 and none", n, clk.waits)
	}
	assertOnly(t, filepath.Dir(dest))
}

func TestGivesUpAfterAttempts(t *testing.T) {
	srv := newBinaryServer(t, nil)
	srv.handle = func(n int32, w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "down", http.StatusBadGateway)
		return true
	}
	clk := &recordingClock{Fake: clock.NewFake(testEpoch)}
	dest := filepath.Join(t.TempDir(), "worker")
	_, err := install(t, clk, newInstaller(t, clk, bootstrap.RetryPolicy{Attempts: 3, Initial: time.Second, Max: time.Minute}),
		srv.workerURL(), sha([]byte("x")), dest)
	if err == nil || !strings.Contains(err.Error(), "giving up after 3 attempts") || !strings.Contains(err.Error(), "502") {
		t.Fatalf("got %v", err)
	}
	if n := srv.requests.Load(); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
	assertOnly(t, filepath.Dir(dest))
}

func TestStaleTemporaryFilesAreRemoved(t *testing.T) {
	body := []byte("worker")
	srv := newBinaryServer(t, body)
	dir := t.TempDir()
	stale := filepath.Join(dir, ".worker.download-123")
	if err := os.WriteFile(stale, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk := &recordingClock{Fake: clock.NewFake(testEpoch)}
	if _, err := install(t, clk, newInstaller(t, clk, bootstrap.DefaultRetryPolicy), srv.workerURL(), sha(body), filepath.Join(dir, "worker")); err != nil {
		t.Fatal(err)
	}
	assertOnly(t, dir, "worker")
}

func TestModeIsRepairedWithoutDownload(t *testing.T) {
	body := []byte("worker")
	srv := newBinaryServer(t, body)
	dest := filepath.Join(t.TempDir(), "worker")
	if err := os.WriteFile(dest, body, 0o600); err != nil {
		t.Fatal(err)
	}
	clk := &recordingClock{Fake: clock.NewFake(testEpoch)}
	changed, err := install(t, clk, newInstaller(t, clk, bootstrap.DefaultRetryPolicy), srv.workerURL(), strings.ToUpper(sha(body)), dest)
	if err != nil || changed {
		t.Fatalf("Install = %v, %v; want unchanged", changed, err)
	}
	if n := srv.requests.Load(); n != 0 {
		t.Fatalf("%d requests, want none", n)
	}
	assertFile(t, dest, body, 0o755)
}

func TestRetryPolicyStopsWhenContextEnds(t *testing.T) {
	clk := clock.NewFake(testEpoch)
	ctx, cancel := context.WithCancel(context.Background())
	armed := clk.Armed()
	done := make(chan error, 1)
	go func() {
		done <- bootstrap.DefaultRetryPolicy.Do(ctx, clk, func(int) error { return errors.New("boom") }, nil)
	}()
	<-armed
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v", err)
	}
}

func TestBackoff(t *testing.T) {
	p := bootstrap.RetryPolicy{Attempts: 10, Initial: 500 * time.Millisecond, Max: 5 * time.Second}
	for n, want := range map[int]time.Duration{1: 500 * time.Millisecond, 2: time.Second, 3: 2 * time.Second,
		4: 4 * time.Second, 5: 5 * time.Second, 9: 5 * time.Second} {
		if got := p.Backoff(n); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, want)
		}
	}
}
