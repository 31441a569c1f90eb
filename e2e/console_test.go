package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
)

// browser is a headless Debian Chromium driven over CDP, stopped by the test that started it.
type browser struct {
	t   *testing.T
	ctx context.Context
	// shots is the directory screenshots are saved to.
	shots string
}

// startBrowser starts headless Chromium (installed by scripts/install-test-deps.sh) with a
// fresh profile. Screenshots go to $BUILDFLEET_TEST_ARTIFACTS/console, else a temp dir.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (run scripts/install-test-deps.sh): %v", err)
	}
	shots := filepath.Join(t.TempDir(), "screenshots")
	if d := os.Getenv("BUILDFLEET_TEST_ARTIFACTS"); d != "" {
		shots = filepath.Join(d, "console")
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("console screenshots: %s", shots)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium makes directories of its own in TMPDIR (org.chromium.Chromium.*) and leaves
		// them behind: give it the test's.
		chromedp.Env("TMPDIR=" + t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	// Start the browser now, so that its process is known.
	if err := chromedp.Do(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	proc := chromedp.FromContext(ctx).Browser.Process()
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc() // waits for the browser process to exit
		if proc != nil {
			if err := syscall.Kill(proc.Pid, 0); err == nil {
				t.Errorf("chromium (pid %d) still running after the test; killing it", proc.Pid)
				_ = proc.Kill()
			}
		}
	})
	return &browser{t: t, ctx: ctx, shots: shots}
}

// run runs chromedp actions with a timeout, failing the test with what on error.
func (b *browser) run(what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.shot("failed-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("%s: %v", what, err)
	}
}

// text returns the text content of the first node matching sel.
func (b *browser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.shot("failed-reading")
		b.t.Fatalf("reading %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// shot saves a full-page screenshot as name.png.
func (b *browser) shot(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.shots, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}

// consoleBuild writes a workspace of four genrules that pass and one that fails on purpose.
func consoleWorkspace(t *testing.T, bz string) *workspace {
	w := newWorkspace(t, bz, 0)
	var sb strings.Builder
	for i := 1; i <= 4; i++ {
		fmt.Fprintf(&sb, "genrule(name = \"ok%d\", srcs = [\"data.txt\"], outs = [\"ok%d.txt\"], cmd = \"wc -c < $(location data.txt) > $@ && echo ok %d >> $@\")\n", i, i, i)
	}
	sb.WriteString("genrule(name = \"broken\", outs = [\"broken.txt\"], cmd = \"echo 'broken: this rule fails on purpose' >&2; exit 3\")\n")
	sb.WriteString("filegroup(name = \"good\", srcs = [\":ok1\", \":ok2\", \":ok3\", \":ok4\"])\n")
	sb.WriteString("filegroup(name = \"everything\", srcs = [\":good\", \":broken\"])\n")
	write(t, filepath.Join(w.dir, "BUILD"), sb.String())
	return w
}

// workersJSON reads the scheduler's /workers page.
func workersJSON(t testing.TB, s *scheduler) map[string]struct {
	State      string `json:"state"`
	LeasesHeld int    `json:"leases_held"`
} {
	t.Helper()
	resp, err := http.Get("http://" + s.metricsAddr + "/workers")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Workers []struct {
			BotID      string `json:"bot_id"`
			State      string `json:"state"`
			LeasesHeld int    `json:"leases_held"`
		} `json:"workers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		State      string `json:"state"`
		LeasesHeld int    `json:"leases_held"`
	}{}
	for _, w := range page.Workers {
		if w.State != "gone" || out[w.BotID].State == "" {
			out[w.BotID] = struct {
				State      string `json:"state"`
				LeasesHeld int    `json:"leases_held"`
			}{w.State, w.LeasesHeld}
		}
	}
	return out
}

// The console as a person uses it, in a real headless Chromium: a scheduler and two worker
// processes, two real Bazel 4.2.3 builds (the second after a clean, with one genrule failing
// on purpose), then the fleet, builds, build and action pages; then one worker gets SIGTERM
// while it runs an action, and the fleet page shows it draining with a countdown to its
// deadline, then gone, with the drain in the preemption timeline.
func TestConsoleInChromium(t *testing.T) {
	bz := bazel4(t)
	s := startScheduler(t, "", "--session-timeout=4s")
	workers := map[string]*process{
		"worker-a": startWorker(t, s, "worker-a", "--worker-concurrency=2", "--drain-timeout=90s"),
		"worker-b": startWorker(t, s, "worker-b", "--worker-concurrency=2", "--drain-timeout=90s"),
	}
	waitUntil(t, 30*time.Second, "both workers serving", func() bool {
		w := workersJSON(t, s)
		return w["worker-a"].State == "serving" && w["worker-b"].State == "serving"
	})

	ws := consoleWorkspace(t, bz)
	remote := []string{"--remote_executor=grpc://" + s.addr, "--spawn_strategy=remote"}
	first, second := uuid.NewString(), uuid.NewString()
	ws.target = "//:good"
	ws.build(append(remote, "--invocation_id="+first)...)
	ws.clean()
	ws.target = "//:everything"
	args := append([]string{"build", "--incompatible_strict_action_env", "--color=no", "--curses=no", "--keep_going", "--invocation_id=" + second}, remote...)
	out, err := ws.run(append(args, ws.target)...)
	if err == nil || !strings.Contains(out, "fails on purpose") {
		t.Fatalf("the second build should fail on //:broken: %v\n%s", err, tail(out, 40))
	}

	b := startBrowser(t)
	base := "http://" + s.metricsAddr
	b.run("opening the fleet page", 20*time.Second,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-worker="worker-a"] .badge.serving`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-worker="worker-b"] .badge.serving`)))
	if n := b.text("#n-serving"); n != "2" {
		t.Errorf("fleet page: %q workers serving, want 2", n)
	}
	b.shot("1-fleet")

	b.run("opening the builds page", 20*time.Second,
		chromedp.Click(chromedp.CSS(`header nav a[href="/console/builds"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-build="`+second+`"]`)))
	row := func(id, col string) string { return b.text(`tr[data-build="` + id + `"] .` + col) }
	if r, c, f := row(first, "c-remote"), row(first, "c-cached"), row(first, "c-failed"); r != "4" || c != "0" || f != "0" {
		t.Errorf("first build: remote %s, cached %s, failed %s; want 4, 0, 0", r, c, f)
	}
	if r, c, f := row(second, "c-remote"), row(second, "c-cached"), row(second, "c-failed"); r != "0" || c != "4" || f != "1" {
		// The failing action ran remotely but counts as failed only: each action counts once.
		t.Errorf("second build: remote %s, cached %s, failed %s; want 0, 4, 1", r, c, f)
	}
	if tool := b.text(`tr[data-build="` + second + `"] td:nth-child(2)`); !strings.Contains(tool, "bazel") {
		t.Errorf("second build's tool is %q, want bazel", tool)
	}
	b.shot("2-builds")

	b.run("opening the failing build", 20*time.Second,
		chromedp.Click(chromedp.CSS(`tr[data-build="`+second+`"] a`)),
		chromedp.WaitVisible(chromedp.CSS(`h2.bad`)))
	b.shot("3-build")
	b.run("opening the failing action", 20*time.Second,
		chromedp.Click(chromedp.CSS(`h2.bad + table tbody tr a.mono`)),
		chromedp.WaitVisible(chromedp.CSS(`#stderr`)))
	if got := b.text("#stderr"); !strings.Contains(got, "broken: this rule fails on purpose") {
		t.Errorf("failing action's stderr: %q", got)
	}
	if got := b.text("#argv"); !strings.Contains(got, "/bin/bash") || !strings.Contains(got, "exit 3") {
		t.Errorf("failing action's argv: %q", got)
	}
	if got := b.text("#exit-code"); got != "3" {
		t.Errorf("failing action's exit code %q, want 3", got)
	}
	// What Bazel 4.2.3 sends in its RequestMetadata header, as the scheduler recorded it.
	b.run("opening the request metadata", 10*time.Second, chromedp.Click(chromedp.CSS(`details.meta summary`)))
	md := b.text("#request-metadata")
	t.Logf("RequestMetadata of Bazel 4.2.3 (Debian bazel-bootstrap):\n%s", md)
	for _, want := range []string{"bazel", second, "Genrule", "//:broken"} {
		if !strings.Contains(md, want) {
			t.Errorf("request metadata lacks %q:\n%s", want, md)
		}
	}
	ranOn := b.text("#worker-link")
	if ranOn != "worker-a" && ranOn != "worker-b" {
		t.Errorf("failing action ran on %q", ranOn)
	}
	b.shot("4-action")
	b.run("following the action to its worker", 20*time.Second,
		chromedp.Click(chromedp.CSS(`#worker-link`)),
		chromedp.WaitVisible(chromedp.CSS(`#recent`)))
	if h := b.text("h1"); h != "Worker "+ranOn {
		t.Errorf("worker page heading %q, want Worker %s", h, ranOn)
	}
	if got := b.text("#recent"); !strings.Contains(got, "Genrule") || !strings.Contains(got, "failed") {
		t.Errorf("worker page's recent actions lack the failed Genrule: %q", got)
	}
	b.shot("5-worker")

	// An action that runs until the test lets it end, then SIGTERM to the worker running it.
	c := newPantsClient(t, s.addr, "")
	g := newGates(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res := submit(ctx, c, "held", g.gatedAction(c, "held", "go"))
	waitUntil(t, 30*time.Second, "the held action running", func() bool { return g.running("held") == 1 })
	victim := ""
	waitUntil(t, 10*time.Second, "a worker holding the held action", func() bool {
		for id, w := range workersJSON(t, s) {
			if w.LeasesHeld == 1 {
				victim = id
			}
		}
		return victim != ""
	})
	p := workers[victim]
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	row2 := `tr[data-worker="` + victim + `"]`
	b.run("seeing the worker draining", 30*time.Second,
		chromedp.Navigate(base+"/console/fleet"),
		chromedp.WaitVisible(chromedp.CSS(row2+` .badge.draining`)),
		chromedp.WaitVisible(chromedp.CSS(row2+` .countdown`)))
	time.Sleep(1500 * time.Millisecond) // let console.js tick the countdown once, for the screenshot and the check
	if cd := b.text(row2 + ` .countdown`); !strings.HasPrefix(cd, "in ") {
		t.Errorf("draining worker's countdown reads %q, want \"in …\"", cd)
	}
	if d := b.text(row2 + ` .drain`); !strings.Contains(d, "signal") {
		t.Errorf("draining worker's notice reads %q, want the signal kind", d)
	}
	b.shot("6-fleet-draining")

	g.open(t, "go")
	if r := <-res; r.err != nil || r.resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("held action: %v %v", r.err, r.resp)
	}
	if code, _ := p.exited(t, 60*time.Second); code != 0 {
		t.Errorf("%s exited %d after its drain, want 0", victim, code)
	}
	b.run("seeing the worker gone", 30*time.Second,
		chromedp.WaitVisible(chromedp.CSS(row2+` .badge.gone`)),
		chromedp.WaitVisible(chromedp.CSS(`#interruptions`)))
	tl := b.text(`#interruptions tbody tr`)
	if !strings.Contains(tl, victim) || !strings.Contains(tl, "signal") {
		t.Errorf("preemption timeline row: %q", tl)
	}
	// It stopped calling once drained: its session closed after the disconnect grace, as
	// drained, not when it expired.
	if !strings.Contains(tl, "drained") {
		t.Errorf("preemption timeline row %q: want the session ended as drained", tl)
	}
	b.shot("7-fleet-gone")
	b.run("opening the queue page", 20*time.Second,
		chromedp.Navigate(base+"/console/queue"), chromedp.WaitVisible(chromedp.CSS(`.chart`)))
	b.shot("8-queue")
}

// With token files, the console in a browser asks for a token, refuses a wrong one, and lets a
// reader in with a cookie until they sign out.
func TestConsoleLoginInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test skipped in -short mode")
	}
	dir := t.TempDir()
	const reader = "console-reader-token-0123456789abcdef"
	clients, workers := filepath.Join(dir, "clients"), filepath.Join(dir, "workers")
	write(t, clients, reader+" * read\n")
	write(t, workers, "console-worker-token-0123456789abcdef\n")
	s := startScheduler(t, "", "--client-tokens-file="+clients, "--worker-tokens-file="+workers)
	b := startBrowser(t)
	base := "http://" + s.metricsAddr
	b.run("opening the console without a token", 20*time.Second,
		chromedp.Navigate(base+"/console/builds"),
		chromedp.WaitVisible(chromedp.CSS(`#token`)))
	b.shot("login-1-form")
	b.run("signing in with a wrong token", 20*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#token`), "not-a-token"),
		chromedp.Click(chromedp.CSS(`#signin`)),
		chromedp.WaitVisible(chromedp.CSS(`#login-error`)))
	if got := b.text("#login-error"); got != "Unknown token." {
		t.Errorf("wrong token: %q", got)
	}
	// The sign-out button exists only once signed in: waiting for it waits for the new page.
	b.run("signing in", 20*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#token`), reader),
		chromedp.Click(chromedp.CSS(`#signin`)),
		chromedp.WaitVisible(chromedp.CSS(`header .who button`)))
	if h := b.text("h1"); h != "Builds" {
		t.Errorf("after signing in the page is %q, want Builds (where the user was going)", h)
	}
	b.shot("login-2-builds")
	b.run("signing out", 20*time.Second,
		chromedp.Click(chromedp.CSS(`header .who button`)),
		chromedp.WaitVisible(chromedp.CSS(`#token`)))
	b.run("opening the fleet after signing out", 20*time.Second,
		chromedp.Navigate(base+"/console/fleet"),
		chromedp.WaitVisible(chromedp.CSS(`#token`)))
}
