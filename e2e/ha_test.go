package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/internal/clustertest"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/objectstoretest"
	"github.com/buildfleet/buildfleet/internal/testproc"
)

// haCluster is three scheduler replicas behind HAProxy, sharing etcd and an S3 bucket.
type haCluster struct {
	t        *testing.T
	etcd     *clustertest.Etcd
	proxy    *clustertest.HAProxy
	replicas []*scheduler
	// all are the replica processes ever started.
	all  []*process
	args []string
	env  []string
}

func startHACluster(t *testing.T, n int) *haCluster {
	t.Helper()
	c := &haCluster{t: t, etcd: clustertest.StartEtcd(t), env: objectstoretest.S3Env()}
	s3 := objectstoretest.StartS3(t, "buildfleet-ha")
	c.args = []string{
		"--ha=etcd", "--etcd-endpoints=" + c.etcd.Endpoint, "--etcd-session-ttl=2s", "--adoption-window=2s",
		"--object-store=s3://buildfleet-ha/cache", "--s3-endpoint=" + s3.Endpoint(),
		"--s3-region=" + objectstoretest.Region, "--s3-force-path-style",
	}
	var backends []clustertest.Backend
	for i := 0; i < n; i++ {
		s := &scheduler{
			addr:        fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			metricsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		}
		c.replicas = append(c.replicas, s)
		backends = append(backends, clustertest.Backend{Addr: s.addr, Check: s.metricsAddr})
		c.start(i)
	}
	c.proxy = clustertest.StartHAProxy(t, backends)
	waitUntil(t, 20*time.Second, "a leader", func() bool { return c.leader() >= 0 })
	return c
}

// start (re)starts replica i on its address, with a fresh storage directory (local tier).
func (c *haCluster) start(i int) {
	s := c.replicas[i]
	s.storageDir = c.t.TempDir()
	all := append([]string{"--listen=" + s.addr, "--advertise-address=" + s.addr, "--metrics-listen=" + s.metricsAddr,
		"--storage-dir=" + s.storageDir}, c.args...)
	s.process = start(c.t, fmt.Sprintf("replica%d", i), filepath.Join(binDir, "scheduler"), c.env, all...)
	c.all = append(c.all, s.process)
	waitHealthy(c.t, s.process, "http://"+s.metricsAddr+"/healthz", 30*time.Second)
}

// leader returns the index of the replica whose /readyz says it leads, or -1.
func (c *haCluster) leader() int {
	for i, s := range c.replicas {
		if s.process == nil {
			continue
		}
		if st, ok := readyz(s); ok && st.Role == "leader" {
			return i
		}
	}
	return -1
}

// readyz reads replica s's /readyz (ok false when it does not answer within a second).
func readyz(s *scheduler) (st cluster.Status, ok bool) {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + s.metricsAddr + "/readyz")
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st) == nil
}

// counter reads a counter of replica s, -1 if it does not answer.
func counter(s *scheduler, name string) float64 {
	resp, err := http.Get("http://" + s.metricsAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// runsByAction counts, from the workers' logs, how many times each action's command ran to
// the end (lease ids end with the action digest).
func runsByAction(workers ...*process) map[string]int {
	runs := map[string]int{}
	for _, w := range workers {
		b, _ := os.ReadFile(w.log)
		for _, line := range strings.Split(string(b), "\n") {
			// A lease that failed before the command ran (inputs unreadable while a replica died:
			// code UNAVAILABLE, retried elsewhere) did not run the action.
			if !strings.Contains(line, `"Action finished"`) || !strings.Contains(line, `"code":"OK"`) {
				continue
			}
			i := strings.Index(line, `"lease_id":"`)
			if i < 0 {
				continue
			}
			id := line[i+len(`"lease_id":"`):]
			id = id[:strings.IndexByte(id, '"')]
			runs[id[strings.LastIndexByte(id, '/')+1:]]++
		}
	}
	return runs
}

// TestBazelBuildSurvivesLeaderKill is the failover story: three replicas behind HAProxy share
// etcd and an S3 bucket; two workers; Bazel 4.2.3 with default retry flags builds genrules of
// about a second each. The leader is SIGKILLed mid-build, then a follower: the build succeeds,
// every action remote, outputs identical to a local build, and no action that was running at
// the kill runs a second time. BUILDFLEET_E2E_FAILOVERS=N repeats the leader kill N times (one
// build each) and reports the figures.
func TestBazelBuildSurvivesLeaderKill(t *testing.T) {
	bazel := bazel4(t)
	rounds := 1
	if v, err := strconv.Atoi(os.Getenv("BUILDFLEET_E2E_FAILOVERS")); err == nil && v > 0 {
		rounds = v
	}
	c := startHACluster(t, 3)
	worker := func(name string) *process {
		return startWorker(t, &scheduler{addr: c.proxy.Addr}, name, "--worker-concurrency=4")
	}
	workers := []*process{worker("w1"), worker("w2")}
	if dir := os.Getenv("BUILDFLEET_E2E_LOG_DIR"); dir != "" {
		// Keep every process's log for a post-mortem (the temp dirs go with the test).
		t.Cleanup(func() {
			for _, p := range append(append([]*process{}, workers...), c.all...) {
				b, _ := os.ReadFile(p.log)
				_ = os.WriteFile(filepath.Join(dir, filepath.Base(filepath.Dir(filepath.Dir(p.log)))+"-"+p.name+".log"), b, 0o644)
			}
		})
	}
	w := newWorkspace(t, bazel, 40)

	w.slowDown(time.Second)
	local := processCounts(t, w.build("--spawn_strategy=local", "--jobs=8"))
	if local["remote"] != 0 {
		t.Fatalf("local build ran remotely: %v", local)
	}
	want := w.outputs()

	twice := 0
	for round := 0; round < rounds; round++ {
		// New commands each round (a different sleep), so every action runs again.
		w.slowDown(time.Second + time.Duration(round+1)*time.Millisecond)
		w.clean()
		var (
			wg      sync.WaitGroup
			figures string
			dead    []int
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			figures, dead = c.killLeaderMidBuild()
		}()
		out := w.build("--remote_executor=grpc://"+c.proxy.Addr, "--remote_instance_name=ha", "--jobs=16")
		wg.Wait()
		for _, i := range dead {
			c.start(i)
		}
		// An action whose result a worker reported to the new leader before the client asked
		// again is answered from the action cache (Bazel counts it as a remote cache hit): it
		// still ran remotely, once.
		counts := processCounts(t, out)
		if counts["remote"]+counts["remote cache hit"] != w.rules {
			t.Fatalf("round %d: %v, want all %d actions remote", round, counts, w.rules)
		}
		sameOutputs(t, want, w.outputs())
		t.Logf("round %d: %s", round, figures)
	}
	for d, n := range runsByAction(workers...) {
		if n > 1 {
			twice++
			t.Logf("action %s ran %d times", d, n)
		}
	}
	t.Logf("FIGURE: actions run twice across %d leader kills: %d", rounds, twice)
	if twice > 0 {
		t.Fatalf("%d actions ran more than once across %d leader kills", twice, rounds)
	}
}

// killLeaderMidBuild waits until the build is well under way, SIGKILLs the leader, measures the
// failover, then SIGKILLs a follower (which costs nothing visible). It returns the figures and
// the replicas to restart.
func (c *haCluster) killLeaderMidBuild() (string, []int) {
	t := c.t
	old := c.leader()
	if old < 0 {
		t.Errorf("no leader before the kill")
		return "", nil
	}
	base := counter(c.replicas[old], "buildfleet_scheduler_leases_handed_out_total")
	waitUntil(t, 60*time.Second, "the build to be under way", func() bool {
		return counter(c.replicas[old], "buildfleet_scheduler_leases_handed_out_total") >= base+8
	})
	c.replicas[old].kill()
	killed := time.Now()
	c.replicas[old].process = nil
	var serving, leased time.Duration
	next := -1
	waitUntil(t, 30*time.Second, "a new leader", func() bool { next = c.leader(); return next >= 0 })
	serving = time.Since(killed)
	waitUntil(t, 30*time.Second, "the new leader's first lease", func() bool {
		return counter(c.replicas[next], "buildfleet_scheduler_leases_handed_out_total") > 0
	})
	leased = time.Since(killed)
	adopted := counter(c.replicas[next], "buildfleet_scheduler_leases_adopted_total")
	dead := []int{old}
	// A follower dies too: its connections move to the others.
	for i, s := range c.replicas {
		if i != next && s.process != nil {
			s.kill()
			s.process = nil
			dead = append(dead, i)
			break
		}
	}
	return fmt.Sprintf("FIGURE: failover kill→new leader serving %s, kill→first lease handed out %s; %v leases adopted",
		serving.Round(time.Millisecond), leased.Round(time.Millisecond), adopted), dead
}

// TestSchedulerRefusesBadHASettings starts the scheduler with replica settings it must refuse
// before it serves anything.
func TestSchedulerRefusesBadHASettings(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the scheduler binary")
	}
	ep, adv := "--etcd-endpoints=http://127.0.0.1:1", "--advertise-address=127.0.0.1:1"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ha=raft"}, `want "etcd" or nothing`},
		{[]string{"--ha=etcd", adv}, "no etcd endpoints"},
		{[]string{ep}, "need --ha=etcd"},
		{[]string{"--ha=etcd", ep, "--advertise-address=replica-1"}, "want host:port"},
		{[]string{"--ha=etcd", ep, adv, "--etcd-session-ttl=1s"}, "at least 2s"},
		{[]string{"--ha=etcd", ep, adv, "--etcd-session-ttl=2500ms"}, "whole seconds"},
		{[]string{"--ha=etcd", ep, adv}, "needs --object-store"},
	} {
		cmd := exec.Command(filepath.Join(binDir, "scheduler"), append([]string{"--listen=127.0.0.1:0", "--metrics-listen=", "--storage-dir=" + t.TempDir()}, c.args...)...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("scheduler %v: %v, output %q; want a failure saying %q", c.args, err, out, c.want)
		}
	}
}

// TestBazelBuildSurvivesFrozenEtcd freezes etcd (SIGSTOP) mid-build for longer than the
// session TTL, then resumes it: the CAS keeps being served throughout, the leader stops leasing
// before its lease can expire, the build resumes once a leader is elected again and succeeds,
// every action remote, none run twice.
func TestBazelBuildSurvivesFrozenEtcd(t *testing.T) {
	bazel := bazel4(t)
	c := startHACluster(t, 3)
	worker := func(name string) *process {
		return startWorker(t, &scheduler{addr: c.proxy.Addr}, name, "--worker-concurrency=4")
	}
	workers := []*process{worker("w1"), worker("w2")}
	w := newWorkspace(t, bazel, 40)
	w.slowDown(time.Second)
	cas := repb.NewContentAddressableStorageClient(dial(t, c.proxy.Addr))
	probe := digest.FromBytes([]byte("probe")).Proto()

	var (
		wg     sync.WaitGroup
		casErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		old := c.leader()
		base := counter(c.replicas[old], "buildfleet_scheduler_leases_handed_out_total")
		waitUntil(t, 60*time.Second, "the build to be under way", func() bool {
			return counter(c.replicas[old], "buildfleet_scheduler_leases_handed_out_total") >= base+8
		})
		c.etcd.Pause()
		frozen := time.Now()
		for time.Since(frozen) < 3*time.Second { // past the 2 s session TTL
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: "ha", BlobDigests: []*repb.Digest{probe}})
			cancel()
			if err != nil && casErr == nil {
				casErr = err
			}
			time.Sleep(100 * time.Millisecond)
		}
		if l := c.leader(); l >= 0 {
			t.Errorf("replica %d still leads %s after etcd froze (TTL 2s)", l, time.Since(frozen))
		}
		c.etcd.Resume()
	}()
	out := w.build("--remote_executor=grpc://"+c.proxy.Addr, "--remote_instance_name=ha", "--jobs=16")
	wg.Wait()
	if casErr != nil {
		t.Errorf("CAS call failed while etcd was frozen: %v", casErr)
	}
	counts := processCounts(t, out)
	if counts["remote"]+counts["remote cache hit"] != w.rules {
		t.Fatalf("%v, want all %d actions remote", counts, w.rules)
	}
	for d, n := range runsByAction(workers...) {
		if n > 1 {
			t.Errorf("action %s ran %d times", d, n)
		}
	}
}

// TestHAProxyTakesAStoppedFollowerOut stops a follower (SIGSTOP: its kernel still accepts
// connections, so a TCP check cannot tell) behind HAProxy, whose HTTP check of /readyz times
// out and marks it down: calls on new connections then all reach the other replicas, none
// stalls. Once the follower continues (SIGCONT) it answers /readyz again.
func TestHAProxyTakesAStoppedFollowerOut(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the scheduler binary, etcd, HAProxy and versitygw")
	}
	c := startHACluster(t, 3)
	lead := c.leader()
	stopped := c.replicas[(lead+1)%3]
	pid := stopped.process.cmd.Process.Pid
	testproc.Freeze(t, pid)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	// Two failed checks, 200 ms apart, each timing out after 300 ms.
	time.Sleep(1500 * time.Millisecond)
	probe := digest.FromBytes([]byte("probe")).Proto()
	for i := 0; i < 9; i++ { // three rounds of the round-robin, a new connection each
		conn := dial(t, c.proxy.Addr)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := repb.NewContentAddressableStorageClient(conn).FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{probe}})
		cancel()
		conn.Close()
		if err != nil {
			t.Fatalf("call %d through HAProxy with a follower stopped: %v", i, err)
		}
	}
	syscall.Kill(pid, syscall.SIGCONT)
	waitUntil(t, 10*time.Second, "the follower to answer /readyz again", func() bool { _, ok := readyz(stopped); return ok })
}
