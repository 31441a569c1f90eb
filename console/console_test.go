package console_test

import (
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/auth"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// story runs a small build in instance: a failing compile and a passing one executed by bot
// w1, and a cache hit of the passing one by a second invocation. It returns the digests.
func (e *env) story(instance string) (bad, good digest.Digest) {
	t := e.t
	bad = e.putAction("/bin/cc", "-c", "src/main.c")
	good = e.putAction("/bin/echo", "ok")
	sBad := e.execute(instance, bad, "inv-1", "CppCompile", "//app:main")
	sGood := e.execute(instance, good, "inv-1", "Genrule", "//app:ok")
	w, leases := e.newBot("w1", 2)
	if len(leases) != 2 {
		t.Fatalf("w1 got %d leases, want 2", len(leases))
	}
	w.update(active(leases[0].Id), active(leases[1].Id))
	e.clk.Advance(10 * time.Second)
	var reports []*rwpb.Lease
	for _, l := range leases {
		res := &repb.ActionResult{StdoutRaw: []byte("ok\n")}
		if actionOf(t, l) == bad {
			res = &repb.ActionResult{ExitCode: 1, StderrDigest: e.put([]byte("src/main.c:3: error: expected ';' before '}'\n")).Proto()}
		} else {
			res.OutputFiles = []*repb.OutputFile{{Path: "out.txt", Digest: e.put([]byte("built\n")).Proto()}}
		}
		reports = append(reports, e.completed(l.Id, res))
	}
	w.update(reports...)
	drain(t, sBad)
	drain(t, sGood)
	if _, err := e.acc.GetActionResult(e.clientCtx("inv-2", "Genrule", "//app:ok"),
		&repb.GetActionResultRequest{InstanceName: instance, ActionDigest: good.Proto()}); err != nil {
		t.Fatalf("GetActionResult of the good action: %v", err)
	}
	return bad, good
}

// What a person checks after a build with a failure: the worker is serving, the build is
// listed with its counts, its page puts the failure first, the failing action's page shows
// argv, stderr, exit code, worker and timeline, and its inputs can be browsed, binary ones too.
func TestPagesOfABuildWithAFailure(t *testing.T) {
	e := newEnv(t)
	bad, good := e.story("")
	h := e.console(nil)

	fleet := page(t, h, "/console/fleet")
	contains(t, "fleet page", fleet, `data-worker="w1"`, `<span class="badge serving">serving</span>`, "OSFamily=linux", "0 / 2")

	builds := page(t, h, "/console/builds")
	contains(t, "builds page", builds, `href="/console/builds/inv-1"`, `href="/console/builds/inv-2"`, "bazel 4.2.3")
	row := builds[strings.Index(builds, `data-build="inv-1"`):]
	row = row[:strings.Index(row, "</tr>")]
	contains(t, "inv-1 row", row, `c-remote">1<`, `c-cached">0<`, `c-failed"><strong>1</strong>`)
	row2 := builds[strings.Index(builds, `data-build="inv-2"`):]
	contains(t, "inv-2 row", row2[:strings.Index(row2, "</tr>")], `c-remote">0<`, `c-cached">1<`)

	build := page(t, h, "/console/builds/inv-1")
	contains(t, "build page", build, `id="c-remote">1<`, `id="c-failed">1<`, "(1 ran on a worker)", "Failures", "CppCompile", "//app:main", "Slowest actions")
	if f, a := strings.Index(build, "Failures"), strings.Index(build, "All finished actions"); f < 0 || a < f {
		t.Errorf("failures are not listed first")
	}
	badURL := fmt.Sprintf("/console/actions/%s/%d", bad.Hash, bad.Size)
	contains(t, "build page", build, `href="`+badURL+`"`)

	action := page(t, h, badURL)
	contains(t, "action page", action,
		`id="exit-code">1<`, `href="/console/workers/w1"`, html.EscapeString("src/main.c:3: error: expected ';' before '}'"),
		"<li><code>/bin/cc</code></li>", "<li><code>-c</code></li>", "PATH", "/bin:/usr/bin",
		"input fetch", "execution", `href="/console/builds/inv-1"`, ">src/</a>", "tool.bin", "executable")

	goodPage := page(t, h, fmt.Sprintf("/console/actions/%s/%d", good.Hash, good.Size))
	contains(t, "good action page", goodPage, `id="exit-code">0<`, "out.txt", "ok\n")

	src := page(t, h, fmt.Sprintf("/console/actions/%s/%d/input/src", bad.Hash, bad.Size))
	contains(t, "input dir", src, ">main.c</a>")
	file := page(t, h, fmt.Sprintf("/console/actions/%s/%d/input/src/main.c", bad.Hash, bad.Size))
	contains(t, "input file", file, "hello from /bin/cc -c src/main.c")
	bin := page(t, h, fmt.Sprintf("/console/actions/%s/%d/input/tool.bin", bad.Hash, bad.Size))
	contains(t, "binary file", bin, "Binary, 10 B", "7f 45 4c 46 00 01 02 03  ff fe", "|.ELF......|")

	worker := page(t, h, "/console/workers/w1")
	contains(t, "worker page", worker, "Recent actions", `href="`+badURL+`"`)

	queue := page(t, h, "/console/queue")
	contains(t, "queue page", queue, "Nothing is waiting", "1 executed, 1 served from the cache, 1 failed")

	if rec := get(t, h, "/console/actions/nothex/12"); rec.Code != http.StatusBadRequest {
		t.Errorf("malformed action address: %d, want 400", rec.Code)
	}
	missing := digest.FromBytes([]byte("never stored"))
	if rec := get(t, h, fmt.Sprintf("/console/actions/%s/%d", missing.Hash, missing.Size)); rec.Code != http.StatusNotFound {
		t.Errorf("unknown action: %d, want 404", rec.Code)
	}
	if rec := get(t, h, fmt.Sprintf("/console/actions/%s/%d/input/nope", bad.Hash, bad.Size)); rec.Code != http.StatusNotFound {
		t.Errorf("missing input path: %d, want 404", rec.Code)
	}
}

// A directory listing shows its first 2000 entries, but every entry opens by its path, also
// those past the listing (node_modules and site-packages directories are that large).
func TestInputsPastTheListingOpenByPath(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	var files []*repb.FileNode
	for i := range 2100 {
		name := fmt.Sprintf("f%05d.txt", i)
		files = append(files, &repb.FileNode{Name: name, Digest: e.put([]byte("contents of " + name)).Proto()})
	}
	big := e.putMessage(&repb.Directory{Files: files})
	root := e.putMessage(&repb.Directory{Directories: []*repb.DirectoryNode{{Name: "node_modules", Digest: big.Proto()}}})
	cmd := e.putMessage(&repb.Command{Arguments: []string{"/bin/true"}})
	act := e.putMessage(&repb.Action{CommandDigest: cmd.Proto(), InputRootDigest: root.Proto()})
	base := fmt.Sprintf("/console/actions/%s/%d/input/node_modules", act.Hash, act.Size)

	dir := page(t, h, base)
	contains(t, "large directory", dir, ">f01999.txt</a>", "Only the first 2000 entries are listed")
	if strings.Contains(dir, "f02000.txt") {
		t.Errorf("the listing shows more than 2000 entries")
	}
	contains(t, "entry past the listing", page(t, h, base+"/f02099.txt"), "contents of f02099.txt")
	if rec := get(t, h, base+"/f02100.txt"); rec.Code != http.StatusNotFound {
		t.Errorf("missing entry: %d, want 404", rec.Code)
	}
}

// An invocation id is the client's choice: a very long one is clipped in the builds table (the
// whole id stays in the link's title and address), so one client cannot push every build's
// counts off-screen.
func TestLongInvocationIDIsClipped(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	long := strings.Repeat("0123456789abcdef", 16) // the scheduler keeps 256 bytes of an id
	e.execute("", e.putAction("/bin/true"), long, "Genrule", "//:x")
	builds := page(t, h, "/console/builds")
	contains(t, "builds page", builds, `title="`+long+`"`, `href="/console/builds/`+long+`"`, ">"+long[:63]+"…</a>")
	if strings.Contains(builds, ">"+long+"<") {
		t.Errorf("the builds table shows the whole %d-character invocation id", len(long))
	}
}

// An action that never ran (no worker for its platform: FAILED_PRECONDITION) has no exit code:
// its build and action pages show "—" and its status, not exit code 0.
func TestActionThatNeverRanHasNoExitCode(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	d := e.putAction("/bin/true")
	s := e.execute("", d, "inv-nowhere", "Genrule", "//:nowhere")
	e.clk.Advance(10 * time.Minute)
	drain(t, s)
	build := page(t, h, "/console/builds/inv-nowhere")
	contains(t, "build page", build, `<td class="num exit"><span class="muted" title="no result">—</span></td>`, "FailedPrecondition")
	action := page(t, h, fmt.Sprintf("/console/actions/%s/%d", d.Hash, d.Size))
	contains(t, "action page", action, `id="exit-code">—<`, "no exit code")
}

// A digest that is in the CAS but not an Action (the empty blob, a source file) is said to be
// no Action, not shown as an empty Action page.
func TestBlobThatIsNotAnAction(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	notes := e.put([]byte("just some notes\n"))
	for _, d := range []digest.Digest{digest.FromBytes(nil), notes} {
		rec := get(t, h, fmt.Sprintf("/console/actions/%s/%d", d.Hash, d.Size))
		if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "Not an Action") {
			t.Errorf("action page of blob %s: %d %.300q, want 404 not an Action", d, rec.Code, rec.Body)
		}
	}
}

// The live refresh gets only the main content, and a drain shows with its kind, reason and a
// countdown to its deadline; once the session is closed the interruption lists its cost.
func TestFleetShowsDrainCountdownAndTimeline(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	d := e.putAction("/bin/sleep", "100")
	s := e.execute("", d, "inv-9", "Genrule", "//:slow")
	w, leases := e.newBot("spot-1", 1)
	w.update(active(leases[0].Id))
	e.clk.Advance(40 * time.Second)
	deadline := e.clk.Now().Add(2 * time.Minute)
	w.drainWith("spot-interruption", "terminate", deadline)
	w.update(active(leases[0].Id))

	partial := page(t, h, "/console/fleet", "X-Console-Partial", "1")
	if strings.Contains(partial, "<html") || strings.Contains(partial, "<header") {
		t.Errorf("partial page holds the layout")
	}
	contains(t, "fleet while draining", partial, `<span class="badge draining">draining</span>`, "spot-interruption: terminate",
		`data-deadline="`+deadline.UTC().Format(time.RFC3339Nano)+`"`, "Genrule", "spot-interruption × 1")

	// The worker hands the action back (drain stop point) and goes away.
	e.clk.Advance(30 * time.Second)
	w.update(&rwpb.Lease{Id: leases[0].Id, State: rwpb.LeaseState_COMPLETED, Status: statusUnavailable()})
	e.clk.Advance(2 * time.Minute)
	gone := func() bool {
		for _, wi := range e.sched.Workers() {
			if wi.BotID == "spot-1" && wi.State == "gone" {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); !gone(); {
		if time.Now().After(deadline) {
			t.Fatal("spot-1 never went")
		}
		time.Sleep(5 * time.Millisecond)
	}
	fleet := page(t, h, "/console/fleet")
	contains(t, "fleet after the drain", fleet, `<span class="badge gone">gone</span>`, "70.0 action-seconds")
	tl := fleet[strings.Index(fleet, `id="interruptions"`):]
	contains(t, "timeline", tl, `<td class="num">0</td>
<td class="num">1</td>
<td class="num">0</td>
<td class="num">70.0</td>`)
	_ = s // the client keeps waiting: the action is queued again
}

// statusUnavailable is the status a draining worker hands a lease back with.
func statusUnavailable() *spb.Status {
	return &spb.Status{Code: int32(codes.Unavailable), Message: "drain: handed back"}
}

// post serves a form POST from a loopback address to Host 127.0.0.1:9090 with extra headers
// ("Name", "value" pairs).
func post(t *testing.T, h http.Handler, path, form string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = "127.0.0.1:40000"
	req.Host = "127.0.0.1:9090"
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// Without token files the console serves loopback callers only.
func TestLoopbackOnlyWithoutTokens(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	req, _ := http.NewRequest(http.MethodGet, "/console/fleet", nil)
	req.RemoteAddr = "10.1.2.3:5555"
	req.Host = "127.0.0.1:9090"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("non-loopback caller: %d, want 403", rec.Code)
	}
	if rec := get(t, h, "/console/fleet"); rec.Code != http.StatusOK {
		t.Fatalf("loopback caller: %d", rec.Code)
	}
}

// With token files, a token with read permission on the instance is required, by login cookie
// or header; each token sees only the instances it may read.
func TestTokensDecideWhatIsShown(t *testing.T) {
	e := newEnv(t)
	bad, _ := e.story("team-a")
	dir := t.TempDir()
	const (
		teamA    = "token-team-a-read-0123456789abcdef"
		teamB    = "token-team-b-read-0123456789abcdef"
		execOnly = "token-exec-only-0123456789abcdefgh"
	)
	tokens := filepath.Join(dir, "clients")
	if err := os.WriteFile(tokens, []byte(teamA+" team-a read\n"+teamB+" team-b read\n"+execOnly+" * execute\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	workers := filepath.Join(dir, "workers")
	if err := os.WriteFile(workers, []byte("worker-token-0123456789abcdefghijkl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	authz, err := auth.New(auth.Config{ClientTokensFile: tokens, WorkerTokensFile: workers}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	h := e.console(authz)
	badURL := fmt.Sprintf("/console/actions/%s/%d?instance=team-a", bad.Hash, bad.Size)

	// No token: to the login form, which keeps where the user was going.
	rec := get(t, h, "/console/builds")
	if rec.Code != http.StatusSeeOther || !strings.HasPrefix(rec.Header().Get("Location"), "/console/login?next=%2Fconsole%2Fbuilds") {
		t.Fatalf("no token: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	if rec := get(t, h, "/console/fleet", "X-Console-Partial", "1"); rec.Code != http.StatusUnauthorized {
		t.Fatalf("no token, live refresh: %d, want 401", rec.Code)
	}
	// Non-loopback callers are served when tokens are on.
	// An unknown token is 401; a known one without read permission (execute-only, a worker's)
	// is 403.
	for tok, want := range map[string]int{"wrong-token-0123456789abcdefghijkl": http.StatusUnauthorized,
		execOnly: http.StatusForbidden, "worker-token-0123456789abcdefghijkl": http.StatusForbidden} {
		if rec := get(t, h, "/console/builds", "Authorization", "Bearer "+tok); rec.Code != want {
			t.Errorf("token %.12s…: %d, want %d", tok, rec.Code, want)
		}
	}

	// Team A sees its build and action; team B sees neither.
	a := page(t, h, "/console/builds", "Authorization", "Bearer "+teamA)
	contains(t, "team A's builds", a, `data-build="inv-1"`)
	contains(t, "team A's action", page(t, h, badURL, "Authorization", "Bearer "+teamA), "/bin/cc")
	b := page(t, h, "/console/builds", "Authorization", "Bearer "+teamB)
	if strings.Contains(b, "inv-1") {
		t.Errorf("team B sees team A's build")
	}
	if rec := get(t, h, badURL, "Authorization", "Bearer "+teamB); rec.Code != http.StatusForbidden {
		t.Errorf("team B on team A's action: %d, want 403", rec.Code)
	}
	if rec := get(t, h, "/console/builds/inv-1", "Authorization", "Bearer "+teamB); rec.Code != http.StatusNotFound {
		t.Errorf("team B on team A's build: %d, want 404", rec.Code)
	}
	fleet := page(t, h, "/console/fleet", "Authorization", "Bearer "+teamB)
	contains(t, "team B's fleet", fleet, `data-worker="w1"`)

	// The login form: a wrong token is refused, a right one sets an HttpOnly cookie that works.
	if rec := post(t, h, "/console/login", "token=nope&next=/console/builds"); rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), "Unknown token") {
		t.Fatalf("bad login: %d", rec.Code)
	}
	if rec := post(t, h, "/console/login", "token="+execOnly); rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), "no read permission") {
		t.Fatalf("login without read: %d", rec.Code)
	}
	rec = post(t, h, "/console/login", "token="+teamA+"&next=https://evil.example/")
	ck := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/console/fleet" || len(ck) != 1 || !ck[0].HttpOnly ||
		ck[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("login: %d %q %+v", rec.Code, rec.Header().Get("Location"), ck)
	}
	withCookie := page(t, h, "/console/builds", "Cookie", ck[0].Name+"="+ck[0].Value)
	contains(t, "builds with the cookie", withCookie, `data-build="inv-1"`, "Sign out")
}
