package worker_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/worker"
)

// A worker with the real runner takes leases from the real scheduler, runs them two at a time
// and its results reach the clients' Execute streams, outputs and all.
func TestWorkerRunsActionsWithRealRunner(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 2}, e.newRunner("w1"))

	var ops []*op
	for i := range 4 {
		d := e.action(fmt.Sprintf("mkdir -p out && echo hello %d > out/hello.txt && echo said %d", i, i), "", 0, "out/hello.txt")
		ops = append(ops, e.execute(d))
	}
	for i, o := range ops {
		resp := o.wait(t)
		if code := codes.Code(resp.GetStatus().GetCode()); code != codes.OK {
			t.Fatalf("action %d: status %v", i, resp.GetStatus())
		}
		r := resp.GetResult()
		if r.GetExitCode() != 0 || len(r.GetOutputFiles()) != 1 {
			t.Fatalf("action %d: result %v", i, r)
		}
		if got, want := string(e.blob(r.GetOutputFiles()[0].GetDigest())), fmt.Sprintf("hello %d\n", i); got != want {
			t.Errorf("action %d: out/hello.txt = %q, want %q", i, got, want)
		}
		if got, want := string(e.blob(r.GetStdoutDigest())), fmt.Sprintf("said %d\n", i); got != want {
			t.Errorf("action %d: stdout = %q, want %q", i, got, want)
		}
		if w := r.GetExecutionMetadata().GetWorker(); w != "w1" {
			t.Errorf("action %d ran on %q, want w1", i, w)
		}
	}
	info := e.workerState("w1")
	if info.Capacity != 2 || info.State != scheduler.WorkerServing {
		t.Errorf("scheduler sees worker %+v, want capacity 2, serving", info)
	}
	props := strings.Join(info.Properties, ",")
	for _, want := range []string{"OSFamily=linux", "ISA=" + worker.ISA(runtimeGOARCH)} {
		if !strings.Contains(props, want) {
			t.Errorf("worker properties %q lack %s", props, want)
		}
	}
}

// The worker never runs more actions than its slots, and starts the next one as soon as a
// slot frees.
func TestWorkerRespectsConcurrencySlots(t *testing.T) {
	inBubble(t, scheduler.Config{}, func(t *testing.T, e *env) {
		names := []string{"a", "b", "c", "d", "e"}
		g := newGateExecutor("w1", names...)
		e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 2}, g)
		ops := map[string]*op{}
		for _, n := range names {
			ops[n] = e.execute(e.action("true", n, 0))
		}
		e.settled("two actions run", func() bool { _, _, running, _ := g.snapshot(); return running == 2 })
		for done := 0; done < len(names); done++ {
			started, _, _, _ := g.snapshot()
			if len(started) > done+2 {
				t.Fatalf("%d actions started with %d finished and 2 slots", len(started), done)
			}
			name := started[len(started)-1]
			if done < len(started) {
				name = started[done]
			}
			g.open(name)
			if resp := ops[name].wait(t); string(resp.GetResult().GetStdoutRaw()) != name+" ran on w1" {
				t.Fatalf("result of %s: %v", name, resp.GetResult())
			}
			if want := min(len(names), done+3); done+1 < len(names) {
				e.settled(fmt.Sprintf("%d actions have started", want), func() bool {
					started, _, _, _ := g.snapshot()
					return len(started) == want
				})
			}
		}
		if _, _, _, peak := g.snapshot(); peak != 2 {
			t.Errorf("at most %d actions ran at once, want 2", peak)
		}
	})
}

// CancelOperation withdraws the lease: the worker kills the running process and frees the
// slot for the next action.
func TestWorkerStopsCancelledAction(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 1}, e.newRunner("w1"))
	pidFile := pidFIFO(t)
	long := e.execute(e.action("echo $$ > "+pidFile+" && exec sleep 60", "", 0))
	pid := waitPID(t, pidFile)
	name := <-long.name
	if _, err := e.ops.CancelOperation(e.ctx, &longrunningpb.CancelOperationRequest{Name: name}); err != nil {
		t.Fatalf("CancelOperation: %v", err)
	}
	if r := <-long.done; codes.Code(statusCode(r)) != codes.Canceled {
		t.Errorf("cancelled operation ended with %v / %v, want CANCELLED", r.err, r.resp.GetStatus())
	}
	if !exited(t, pid, 15*time.Second) {
		t.Fatalf("the cancelled action's process %d still runs 15 s later", pid)
	}
	// The slot is free again.
	next := e.execute(e.action("echo next", "", 0))
	if resp := next.wait(t); string(e.blob(resp.GetResult().GetStdoutDigest())) != "next\n" {
		t.Errorf("next action: %v", resp)
	}
}

func statusCode(r opResult) int32 {
	if r.err != nil {
		return int32(codesOf(r.err))
	}
	return r.resp.GetStatus().GetCode()
}

// pidFIFO makes a FIFO for a shell action to write its pid to (echo $$ > path), so that the
// test learns the pid the moment it is written, without polling.
func pidFIFO(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pid")
	if err := unix.Mkfifo(path, 0o666); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitPID reads the pid a shell action writes to the FIFO made by pidFIFO. Opening the FIFO
// blocks until the action opens it; the test fails if it has not after 15 s.
func waitPID(t *testing.T, path string) int {
	t.Helper()
	type read struct {
		b   []byte
		err error
	}
	got := make(chan read, 1)
	go func() {
		b, err := os.ReadFile(path)
		got <- read{b, err}
	}()
	select {
	case r := <-got:
		pid, err := strconv.Atoi(strings.TrimSpace(string(r.b)))
		if r.err != nil || err != nil || pid <= 0 {
			t.Fatalf("reading the action's pid: %q, %v", r.b, r.err)
		}
		return pid
	case <-time.After(15 * time.Second):
		// Open the FIFO for writing ourselves so that the reader is not left blocked.
		if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-got
		t.Fatal("the action did not write its pid within 15 s")
		return 0
	}
}

// exited reports whether process pid has exited, waiting for it up to wait. The wait is on
// a pidfd (pidfd_open and poll), woken by the exit itself, not by polling.
func exited(t *testing.T, pid int, wait time.Duration) bool {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return true // already gone
	}
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(wait.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll of the pidfd of %d: %v", pid, err)
		}
		return n > 0
	}
}
