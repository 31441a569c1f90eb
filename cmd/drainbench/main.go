// Command drainbench measures what draining on an interruption notice saves, against real
// scheduler and worker processes on loopback. It runs the same workload twice: once with a
// notice-aware worker (a fake GCE metadata server on 127.0.0.1 announces the preemption at the
// start of the notice window), once with a worker that only reacts to SIGTERM and gets it when
// the machine goes away at the end of that window (then SIGKILL a moment later, as a shutdown
// does). A second, steady worker serves throughout. It prints, for each run, the time from the
// notice to BOT_TERMINATING seen by the scheduler, the time from the notice to the interrupted
// worker's last lease released, and the seconds of action work lost, and their ratios.
//
// Run it from the repository root: go run ./cmd/drainbench (it builds cmd/scheduler and
// cmd/worker into a temporary directory unless --bin-dir names one that holds them).
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	fs := flag.NewFlagSet("drainbench", flag.ExitOnError)
	cfg := benchConfig{}
	fs.StringVar(&cfg.binDir, "bin-dir", "", "directory holding the scheduler and worker binaries (default: build them)")
	fs.DurationVar(&cfg.window, "window", 30*time.Second, "time from the interruption notice to the machine going away (GCE spot: 30 s)")
	fs.DurationVar(&cfg.noticeAfter, "notice-after", 6*time.Second, "time from the start of the workload to the notice")
	fs.DurationVar(&cfg.short, "short", 6*time.Second, "duration of a short action")
	fs.DurationVar(&cfg.long, "long", 60*time.Second, "duration of a long action")
	fs.IntVar(&cfg.shorts, "shorts", 60, "number of short actions")
	fs.IntVar(&cfg.longs, "longs", 2, "number of long actions (the interrupted worker gets them first)")
	fs.IntVar(&cfg.concurrency, "concurrency", 4, "action slots of each worker")
	fs.DurationVar(&cfg.margin, "drain-safety-margin", 10*time.Second, "the notice-aware worker's --drain-safety-margin")
	fs.DurationVar(&cfg.sessionTimeout, "session-timeout", 20*time.Second, "the scheduler's --session-timeout (how long a vanished worker's leases wait)")
	fs.DurationVar(&cfg.shutdown, "shutdown", 2*time.Second, "time from SIGTERM to SIGKILL when the machine goes away")
	_ = fs.Parse(os.Args[1:])
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "drainbench:", err)
		os.Exit(1)
	}
}
