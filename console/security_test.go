package console_test

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/auth"
	"github.com/buildfleet/buildfleet/console"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// otherLease returns the lease of two that is not l.
func otherLease(leases []*rwpb.Lease, l *rwpb.Lease) *rwpb.Lease {
	if leases[0] == l {
		return leases[1]
	}
	return leases[0]
}

// tokenConsole returns a console over e whose client tokens file holds lines, and the file.
func (e *env) tokenConsole(lines string) (*console.Console, string) {
	t := e.t
	dir := t.TempDir()
	tokens := filepath.Join(dir, "clients")
	if err := os.WriteFile(tokens, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	authz, err := auth.New(auth.Config{ClientTokensFile: tokens}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e.authz = authz
	return e.console(authz), tokens
}

const readToken = "token-read-all-0123456789abcdefghij"

// login signs in with token through the form and returns the Cookie header value it set.
func login(t *testing.T, h http.Handler, token string) string {
	t.Helper()
	rec := post(t, h, "/console/login", "token="+token+"&next=/console/builds")
	ck := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || len(ck) != 1 {
		t.Fatalf("login: %d %+v\n%s", rec.Code, ck, rec.Body)
	}
	return ck[0].Name + "=" + ck[0].Value
}

// With no token files, a loopback caller asking for a name that is not a loopback one (a
// DNS-rebound attacker.example) is refused on every console path; loopback names and the
// configured listen address are served.
func TestHostCheckWithoutTokens(t *testing.T) {
	e := newEnv(t)
	h := console.New(console.Options{Scheduler: e.sched, CAS: e.cas, ActionCache: e.ac, Clock: e.clk,
		ListenAddr: "192.0.2.7:9290", Logger: zerolog.Nop()})
	for _, path := range []string{"/console/fleet", "/console/builds", "/console/static/console.css", "/console/login", "/console/"} {
		for _, host := range []string{"attacker.example:9290", "attacker.example", "127.0.0.1.attacker.example:9290", "10.0.0.1:9290"} {
			rec := get(t, h, path, "Host", host)
			if rec.Code != http.StatusMisdirectedRequest || !strings.Contains(rec.Body.String(), "loopback Host") {
				t.Errorf("GET %s with Host %s: %d %.120q, want 421", path, host, rec.Code, rec.Body)
			}
		}
	}
	for _, host := range []string{"127.0.0.2:9290", "localhost:9290", "LOCALHOST", "[::1]:9290", "127.0.0.1", "192.0.2.7:9290"} {
		if rec := get(t, h, "/console/fleet", "Host", host); rec.Code != http.StatusOK {
			t.Errorf("Host %s: %d, want 200", host, rec.Code)
		}
	}
}

// A browser behind a basic-auth reverse proxy sends Authorization: Basic with every request;
// the console still reads its login cookie. A wrong Bearer token is still refused.
func TestCookieUsedBesideBasicAuthorization(t *testing.T) {
	e := newEnv(t)
	h, _ := e.tokenConsole(readToken + " * read\n")
	cookie := login(t, h, readToken)
	body := page(t, h, "/console/builds", "Cookie", cookie, "Authorization", "Basic dXNlcjpwYXNz")
	contains(t, "builds behind basic auth", body, "Sign out")
	if rec := get(t, h, "/console/builds", "Cookie", cookie, "Authorization", "Bearer wrong-token-0123456789abcdefghijkl"); rec.Code != http.StatusUnauthorized {
		t.Errorf("wrong bearer beside a cookie: %d, want 401", rec.Code)
	}
}

// The login cookie is an opaque random session id, not the token; the session ends after 12
// hours, on sign out, and when the token is revoked by a reload of the token files.
func TestSessionsAreOpaqueAndEnd(t *testing.T) {
	e := newEnv(t)
	h, tokens := e.tokenConsole(readToken + " * read\n")
	signedIn := func(cookie string) bool {
		rec := get(t, h, "/console/builds", "Cookie", cookie)
		return rec.Code == http.StatusOK
	}

	c1, c2 := login(t, h, readToken), login(t, h, readToken)
	if strings.Contains(c1, readToken) || c1 == c2 || len(c1) < len("buildfleet_console_session=")+64 {
		t.Fatalf("cookies %q and %q: want distinct opaque session ids", c1, c2)
	}
	if !signedIn(c1) || !signedIn(c2) {
		t.Fatal("fresh sessions are not signed in")
	}
	name, _, _ := strings.Cut(c1, "=")
	if signedIn(name + "=" + readToken) {
		t.Error("the raw token as cookie value signs in")
	}

	// Sign out ends that session only.
	req := post(t, h, "/console/logout", "", "Cookie", c1)
	if req.Code != http.StatusSeeOther {
		t.Fatalf("logout: %d", req.Code)
	}
	if signedIn(c1) || !signedIn(c2) {
		t.Errorf("after signing out c1: c1 %v c2 %v, want false true", signedIn(c1), signedIn(c2))
	}

	// Expiry after 12 hours on the injected clock.
	e.clk.Advance(12*time.Hour - time.Second)
	if !signedIn(c2) {
		t.Error("session ended before 12 h")
	}
	e.clk.Advance(time.Second)
	if signedIn(c2) {
		t.Error("session outlived 12 h")
	}

	// Revocation: the token is removed from the file and the file reloaded.
	c3 := login(t, h, readToken)
	if err := os.WriteFile(tokens, []byte("token-other-0123456789abcdefghijklm * read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.authz.Reload(); err != nil {
		t.Fatal(err)
	}
	if signedIn(c3) {
		t.Error("session of a revoked token still signed in")
	}
	if err := os.WriteFile(tokens, []byte(readToken+" * read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.authz.Reload(); err != nil {
		t.Fatal(err)
	}
	if signedIn(c3) {
		t.Error("session of a revoked token came back when the token was restored")
	}
}

// The login form says what to paste (the token alone: the first field of a line of the client
// tokens file) and what the cookie holds (a random session id, never the token; 12 hours), as
// the README does, and what it says holds.
func TestLoginFormSaysWhatToPasteAndWhatTheCookieHolds(t *testing.T) {
	e := newEnv(t)
	h, _ := e.tokenConsole(readToken + " * read\n")
	form := page(t, h, "/console/login")
	contains(t, "login form", form, "the first field", "session id, never the token", "12 hours")
	if strings.Contains(form, "token is kept in a cookie") || strings.Contains(form, "(a line of the scheduler") {
		t.Errorf("the login form still says the cookie keeps the token, or to paste a whole line")
	}
	if rec := post(t, h, "/console/login", "token="+url.QueryEscape(readToken+" * read")); rec.Code != http.StatusUnauthorized {
		t.Errorf("a whole line of the token file signed in: %d", rec.Code)
	}
	rec := post(t, h, "/console/login", "token="+readToken)
	ck := rec.Result().Cookies()
	if len(ck) != 1 || strings.Contains(ck[0].Value, readToken) || ck[0].MaxAge != int((12*time.Hour).Seconds()) {
		t.Errorf("login cookie %+v: want a session id kept 12 hours", ck)
	}
}

// The login form refuses cross-site posts (login CSRF) and accepts same-origin ones.
func TestLoginRefusesCrossSitePosts(t *testing.T) {
	e := newEnv(t)
	h, _ := e.tokenConsole(readToken + " * read\n")
	for _, hdr := range [][]string{
		{"Origin", "https://evil.example"},
		{"Origin", "http://127.0.0.1:9091"},
		{"Origin", "null"},
		{"Sec-Fetch-Site", "cross-site"},
	} {
		rec := post(t, h, "/console/login", "token="+readToken, hdr...)
		if rec.Code != http.StatusForbidden || len(rec.Result().Cookies()) != 0 {
			t.Errorf("login with %s: %s: %d, cookies %v; want 403 and none", hdr[0], hdr[1], rec.Code, rec.Result().Cookies())
		}
	}
	for _, hdr := range [][]string{{"Origin", "http://127.0.0.1:9090"}, {"Sec-Fetch-Site", "same-origin"}, {}} {
		if rec := post(t, h, "/console/login", "token="+readToken, hdr...); rec.Code != http.StatusSeeOther || len(rec.Result().Cookies()) != 1 {
			t.Errorf("same-origin login %v: %d", hdr, rec.Code)
		}
	}
}

// A blob the CAS does not hold (a wrong size) is 404 "not in the CAS", not a 200 page.
func TestUnknownBlobIsNotFound(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	d := e.put([]byte("stored blob\n"))
	contains(t, "stored blob", page(t, h, fmt.Sprintf("/console/blobs/%s/%d", d.Hash, d.Size)), "stored blob")
	for _, u := range []digest.Digest{{Hash: d.Hash, Size: d.Size + 1}, digest.FromBytes([]byte("never stored"))} {
		rec := get(t, h, fmt.Sprintf("/console/blobs/%s/%d", u.Hash, u.Size))
		if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "not in the CAS") {
			t.Errorf("blob %s: %d %.120q, want 404 not in the CAS", u, rec.Code, rec.Body)
		}
	}
}

// A build started when its first action was queued, not when one first finished, whether its
// other actions still run or have all finished.
func TestBuildStartsAtFirstQueueTime(t *testing.T) {
	e := newEnv(t)
	h := e.console(nil)
	queued := e.clk.Now()
	first, second := e.putAction("/bin/true", "1"), e.putAction("/bin/true", "2")
	s1 := e.execute("", first, "inv-s", "Genrule", "//:a")
	e.clk.Advance(30 * time.Second)
	s2 := e.execute("", second, "inv-s", "Genrule", "//:b")
	w, leases := e.newBot("w1", 2)
	if len(leases) != 2 {
		t.Fatalf("%d leases", len(leases))
	}
	e.clk.Advance(time.Minute)
	done := leases[0]
	if actionOf(t, done) != second {
		done = leases[1]
	}
	w.update(e.completed(done.Id, &repb.ActionResult{}), active(otherLease(leases, done).Id))
	drain(t, s2)
	want := `data-since="` + queued.UTC().Format(time.RFC3339Nano) + `"`
	for _, when := range []string{"while the first action runs", "after all finished"} {
		if when == "after all finished" {
			w.update(e.completed(otherLease(leases, done).Id, &repb.ActionResult{}))
			drain(t, s1)
		}
		contains(t, "build page "+when, page(t, h, "/console/builds/inv-s"), "started "+`<span `+want)
		row := page(t, h, "/console/builds")
		row = row[strings.Index(row, `data-build="inv-s"`):]
		contains(t, "builds row "+when, row[:strings.Index(row, "</tr>")], want)
	}
}
