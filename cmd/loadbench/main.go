// Command loadbench loads real scheduler and worker processes on loopback and reports what the
// load cost: leases requeued as lost (per 10,000 actions), latency, and the scheduler's resident
// memory and goroutines against its idle level measured in the same run.
//
// Two workloads:
//
//   - actions: --actions distinct no-op actions (each runs /bin/true), --in-flight at a time,
//     on --workers workers of --slots slots each.
//   - uploads: --uploads ByteStream uploads of --upload-size bytes each that a client starts
//     (first half sent) and drops, as Bazel and Pants do when a build is interrupted.
//
// Run it from the repository root: go run ./cmd/loadbench (it builds cmd/scheduler and
// cmd/worker into a temporary directory unless --bin-dir names one that holds them). Extra
// scheduler flags go after --, e.g. go run ./cmd/loadbench -- --operation-retention-count=1000.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	fs := flag.NewFlagSet("loadbench", flag.ExitOnError)
	cfg := benchConfig{}
	fs.StringVar(&cfg.binDir, "bin-dir", "", "directory holding the scheduler and worker binaries (default: build them)")
	fs.StringVar(&cfg.workload, "workload", "actions", "actions or uploads")
	fs.IntVar(&cfg.actions, "actions", 5000, "no-op actions to run (workload actions)")
	fs.IntVar(&cfg.inFlight, "in-flight", 256, "actions (or uploads) in flight at once")
	fs.IntVar(&cfg.workers, "workers", 2, "worker processes")
	fs.IntVar(&cfg.slots, "slots", 8, "slots of each worker (--worker-concurrency)")
	fs.IntVar(&cfg.uploads, "uploads", 4500, "dropped uploads (workload uploads)")
	fs.IntVar(&cfg.uploadSize, "upload-size", 64<<10, "bytes sent by each dropped upload (half the blob)")
	_ = fs.Parse(os.Args[1:])
	cfg.schedulerArgs = fs.Args()
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "loadbench:", err)
		os.Exit(1)
	}
}
