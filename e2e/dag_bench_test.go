package e2e_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DAG shape of BenchmarkBazelLayeredDAG: dagLayers layers of dagWidth genrules, each rule past
// the first layer reading dagFanIn outputs of the layer before it.
const (
	dagLayers = 10
	dagWidth  = 30
	dagFanIn  = 3
)

// BenchmarkBazelLayeredDAG builds a layered DAG of 300 genrules (10 layers of 30, each rule
// hashing 3 outputs of the layer before it) with Bazel 4.2.3, once locally (unsandboxed: the
// cheapest local strategy, --spawn_strategy=local) and once remotely on a fresh scheduler and one
// worker with 8 slots on this machine, in each round; rounds alternate which goes first. It
// reports the median over rounds of remote wall time over local wall time as x-local (the goal
// is at most 1.15), and both medians in seconds. Each remote build starts from empty storage and
// an empty worker cache: a clean remote build, every action executed (checked), its outputs equal
// to the local build's (checked in the first round). Set BUILDFLEET_BENCH_PROFILE_DIR to keep
// Bazel's JSON profile and execution log of every build there.
//
// Run with -benchtime=Nx: every iteration is one round of two builds (about 10 s each here).
func BenchmarkBazelLayeredDAG(b *testing.B) {
	bazel := bazel4(b)
	w := newWorkspace(b, bazel, dagLayers*dagWidth)
	writeLayeredDAG(b, w)
	profiles := os.Getenv("BUILDFLEET_BENCH_PROFILE_DIR")
	profileFlags := func(name string) []string {
		if profiles == "" {
			return nil
		}
		return []string{"--profile=" + filepath.Join(profiles, name+".profile.gz"),
			"--experimental_execution_log_file=" + filepath.Join(profiles, name+".execlog")}
	}
	local := []string{"--spawn_strategy=local", "--genrule_strategy=local"}
	// Warm the Bazel server (start-up, loading) outside the timings.
	w.build(local...)
	want := w.outputs()

	bazelPid := w.serverPid()
	var localS, remoteS, ratios []float64
	var cpu cpuFigures
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		b.StopTimer()
		s := startScheduler(b, "")
		worker := startWorker(b, s, "dag-bench", "--worker-concurrency=8")
		waitForWorker(b, s)
		remote := []string{"--remote_executor=grpc://" + s.addr, "--remote_instance_name=dag-bench", "--jobs=16"}
		runLocal := func() float64 {
			w.clean()
			c0 := cpuSeconds(b, bazelPid)
			t0 := time.Now()
			w.build(append(local, profileFlags(fmt.Sprintf("local-%d", round))...)...)
			d := time.Since(t0).Seconds()
			cpu.bazelLocal += cpuSeconds(b, bazelPid) - c0
			return d
		}
		runRemote := func() float64 {
			w.clean()
			c0, s0, w0 := cpuSeconds(b, bazelPid), cpuSeconds(b, s.cmd.Process.Pid), cpuSeconds(b, worker.cmd.Process.Pid)
			stopPerf := perfRecord(b, profiles, fmt.Sprintf("remote-%d", round), s.cmd.Process.Pid, worker.cmd.Process.Pid)
			t0 := time.Now()
			out := w.build(append(remote, profileFlags(fmt.Sprintf("remote-%d", round))...)...)
			d := time.Since(t0).Seconds()
			stopPerf()
			cpu.bazelRemote += cpuSeconds(b, bazelPid) - c0
			cpu.scheduler += cpuSeconds(b, s.cmd.Process.Pid) - s0
			cpu.worker += cpuSeconds(b, worker.cmd.Process.Pid) - w0
			if counts := processCounts(b, out); counts["remote"] != w.rules {
				b.Fatalf("remote build: %v, want %d remote", counts, w.rules)
			}
			if round == 0 {
				sameOutputs(b, want, w.outputs())
			}
			return d
		}
		b.StartTimer()
		var l, r float64
		if round%2 == 0 {
			l, r = runLocal(), runRemote()
		} else {
			r, l = runRemote(), runLocal()
		}
		b.StopTimer()
		localS, remoteS, ratios = append(localS, l), append(remoteS, r), append(ratios, r/l)
		b.Logf("round %d: local %.2f s, remote %.2f s, remote/local %.3f", round, l, r, r/l)
		worker.stop(b, 20*time.Second)
		s.stop(b, 20*time.Second)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(median(localS), "local-s")
	b.ReportMetric(median(remoteS), "remote-s")
	b.ReportMetric(median(ratios), "x-local")
	// Where the CPU went (2 cores shared by everything): per action, in milliseconds.
	perAction := func(sec float64) float64 { return sec * 1000 / float64(b.N*w.rules) }
	b.ReportMetric(perAction(cpu.bazelLocal), "bazel-local-cpu-ms/action")
	b.ReportMetric(perAction(cpu.bazelRemote), "bazel-remote-cpu-ms/action")
	b.ReportMetric(perAction(cpu.scheduler), "scheduler-cpu-ms/action")
	b.ReportMetric(perAction(cpu.worker), "worker-cpu-ms/action")
}

// cpuFigures sums the CPU seconds (user and system) that the Bazel server spent in local and
// remote builds and that the scheduler and worker processes spent in remote builds.
type cpuFigures struct {
	bazelLocal, bazelRemote, scheduler, worker float64
}

// cpuSeconds returns the user and system CPU time that process pid has used, in seconds, from
// /proc/PID/stat (the process's own threads, not its children: the worker's actions are not
// counted).
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start after the last ')'.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("cannot parse /proc/%d/stat: %q", pid, stat)
	}
	return (utime + stime) / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat CPU times on Linux.
const clockTicks = 100

// serverPid returns the process id of w's Bazel server (starting it if needed).
func (w *workspace) serverPid() int {
	w.t.Helper()
	out, err := w.run("info", "server_pid")
	if err != nil {
		w.t.Fatalf("bazel info server_pid: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(lines[len(lines)-1]))
	if err != nil {
		w.t.Fatalf("bazel info server_pid: %q", out)
	}
	return pid
}

// writeLayeredDAG replaces w's BUILD file with the layered DAG: rule g{i} writes out{i}.txt,
// the SHA-256 of its inputs' contents and its own name; the first layer reads data.txt.
func writeLayeredDAG(b *testing.B, w *workspace) {
	var sb strings.Builder
	for layer := 0; layer < dagLayers; layer++ {
		for j := 0; j < dagWidth; j++ {
			i := layer*dagWidth + j
			srcs := `"data.txt"`
			if layer > 0 {
				var deps []string
				for k := 0; k < dagFanIn; k++ {
					deps = append(deps, fmt.Sprintf(`":g%d"`, (layer-1)*dagWidth+(j+k*7)%dagWidth))
				}
				srcs = strings.Join(deps, ", ")
			}
			fmt.Fprintf(&sb, "genrule(name = \"g%d\", srcs = [%s], outs = [\"out%d.txt\"], cmd = \"cat $(SRCS) | sha256sum > $@ && echo rule %d >> $@\")\n", i, srcs, i, i)
		}
	}
	sb.WriteString("filegroup(name = \"everything\", srcs = [")
	for i := 0; i < dagLayers*dagWidth; i++ {
		fmt.Fprintf(&sb, "\":g%d\", ", i)
	}
	sb.WriteString("])\n")
	write(b, filepath.Join(w.dir, "BUILD"), sb.String())
}

// waitForWorker waits until the scheduler's /workers page lists a worker.
func waitForWorker(b *testing.B, s *scheduler) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(workersJSON(b, s)) == 0 {
		if time.Now().After(deadline) {
			b.Fatal("no worker connected to the scheduler within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// median returns the median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// perfRecord samples the call stacks of processes pids with perf(1) into DIR/NAME.perf.data
// when profiles (BUILDFLEET_BENCH_PROFILE_DIR) is set and perf is installed, until the returned
// function is called.
func perfRecord(b *testing.B, profiles, name string, pids ...int) (stop func()) {
	b.Helper()
	perf, err := exec.LookPath("perf")
	if profiles == "" || err != nil {
		return func() {}
	}
	var list []string
	for _, p := range pids {
		list = append(list, strconv.Itoa(p))
	}
	cmd := exec.Command(perf, "record", "-q", "-F", "499", "-g", "-o", filepath.Join(profiles, name+".perf.data"), "-p", strings.Join(list, ","))
	if err := cmd.Start(); err != nil {
		b.Logf("perf record: %v", err)
		return func() {}
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
	}
}
