package userdata_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

const templatePath = "worker.sh.tftpl"

// shellQuote quotes s as the Terraform modules do: replace(v, "'", "'\\”") inside '…'.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// values are the template variables, before quoting.
type values struct {
	releaseURL, releaseVersion, sha256sumsSHA256                                     string
	bootstrapURL, bootstrapSHA256, bootstrapPath, workerURL, workerSHA256, scheduler string
	tokenFile, tokenCommand                                                          string
	bootstrapArgs                                                                    []string
}

// render evaluates the template as Terraform's templatefile() does (an HCL template).
func render(t *testing.T, v values) string {
	t.Helper()
	src, err := os.ReadFile(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	expr, diags := hclsyntax.ParseTemplate(src, templatePath, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("parsing template: %s", diags)
	}
	var args []string
	for _, a := range v.bootstrapArgs {
		args = append(args, shellQuote(a))
	}
	vars := map[string]cty.Value{
		"release_url":       cty.StringVal(shellQuote(v.releaseURL)),
		"release_version":   cty.StringVal(shellQuote(v.releaseVersion)),
		"sha256sums_sha256": cty.StringVal(shellQuote(v.sha256sumsSHA256)),
		"bootstrap_url":     cty.StringVal(shellQuote(v.bootstrapURL)),
		"bootstrap_sha256":  cty.StringVal(shellQuote(v.bootstrapSHA256)),
		"bootstrap_path":    cty.StringVal(shellQuote(v.bootstrapPath)),
		"worker_url":        cty.StringVal(shellQuote(v.workerURL)),
		"worker_sha256":     cty.StringVal(shellQuote(v.workerSHA256)),
		"scheduler":         cty.StringVal(shellQuote(v.scheduler)),
		"token_file":        cty.StringVal(shellQuote(v.tokenFile)),
		"token_command":     cty.StringVal(shellQuote(v.tokenCommand)),
		"bootstrap_args":    cty.StringVal(strings.Join(args, " ")),
	}
	// Like templatefile(), refuse a template that uses a variable it is not given.
	for _, tr := range expr.Variables() {
		if _, ok := vars[tr.RootName()]; !ok {
			t.Fatalf("template uses %q, which the modules do not pass", tr.RootName())
		}
	}
	out, diags := expr.Value(&hcl.EvalContext{Variables: vars})
	if diags.HasErrors() {
		t.Fatalf("rendering template: %s", diags)
	}
	return out.AsString()
}

func sample() values {
	return values{
		bootstrapURL: "https://releases.example.com/buildfleet/v1.2.3/bootstrap-linux-amd64", bootstrapSHA256: strings.Repeat("a", 64),
		bootstrapPath: "/usr/local/sbin/buildfleet-bootstrap", workerURL: "s3://artifacts/buildfleet/v1.2.3/worker",
		workerSHA256: strings.Repeat("b", 64), scheduler: "grpc://scheduler.internal:8980",
		tokenFile:     "/etc/buildfleet/token",
		tokenCommand:  "aws ssm get-parameter --name /buildfleet/worker-token --with-decryption --query Parameter.Value --output text",
		bootstrapArgs: []string{"--packages=default", "--drain-timeout=100s", "--", "--platform", "pool=it's spot"},
	}
}

func writeScript(t *testing.T, text string) string {
	p := filepath.Join(t.TempDir(), "user-data.sh")
	if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRenderedScriptParses(t *testing.T) {
	script := render(t, sample())
	out, err := exec.Command("bash", "-n", writeScript(t, script)).CombinedOutput()
	if err != nil {
		t.Fatalf("bash -n: %v\n%s\n%s", err, out, script)
	}
	if n := strings.Count(script, "\n"); n > 60 {
		t.Errorf("user-data is %d lines; keep it to one screen", n)
	}
	if !strings.Contains(script, `'pool=it'\''s spot'`) {
		t.Errorf("argument with a quote not shell-quoted:\n%s", script)
	}
}

var (
	assignRE = regexp.MustCompile(`(?m)^\s*([A-Za-z_][A-Za-z0-9_]*)=`)
	// defaultRE matches ${NAME:-default}: an environment variable with a default is never unset.
	defaultRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*):-`)
	refRE     = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)
)

// TestEveryVariableUsedIsDefined guards against the typo in the instructions this template
// replaces, where the checksum was checked against a variable that was never set.
func TestEveryVariableUsedIsDefined(t *testing.T) {
	script := render(t, sample())
	defined := map[string]bool{}
	for _, m := range assignRE.FindAllStringSubmatch(script, -1) {
		defined[m[1]] = true
	}
	for _, m := range defaultRE.FindAllStringSubmatch(script, -1) {
		defined[m[1]] = true
	}
	var undefined []string
	for _, m := range refRE.FindAllStringSubmatch(script, -1) {
		if !defined[m[1]] {
			undefined = append(undefined, m[1])
		}
	}
	sort.Strings(undefined)
	if len(undefined) > 0 {
		t.Fatalf("variables used but never assigned: %v", undefined)
	}
	if !regexp.MustCompile(`(?m)^verify\(\) \{.*\n\s*got="\$\(sha256sum < "\$1"`).MatchString(script) {
		t.Fatal("verify() does not compute the file's sha256")
	}
	if !strings.Contains(script, "\nverify \"$tmp\" \"$BOOTSTRAP_SHA256\" ") {
		t.Fatal("the bootstrapper is not verified against $BOOTSTRAP_SHA256")
	}
	if !strings.Contains(script, "BOOTSTRAP_SHA256="+shellQuote(sample().bootstrapSHA256)+"\n") {
		t.Fatal("BOOTSTRAP_SHA256 is not assigned from the bootstrap_sha256 template variable")
	}
}

// TestScriptInstallsTheWorker runs the rendered user-data for real against a server on
// 127.0.0.1: it fetches the built bootstrapper, verifies it, fetches the token, and the
// bootstrapper installs the worker. A wrong pinned checksum stops everything.
func TestScriptInstallsTheWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds the bootstrapper and runs the user-data with bash; skipped with -short")
	}
	for _, tool := range []string{"bash", "curl", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bootstrap-build")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/bootstrap").CombinedOutput(); err != nil {
		t.Fatalf("building ./cmd/bootstrap: %v\n%s", err, out)
	}
	bootstrapBin, _ := os.ReadFile(bin)
	workerBin := []byte("#!/bin/sh\necho worker\n")
	var workerRequests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bootstrap":
			w.Write(bootstrapBin)
		case "/worker":
			workerRequests.Add(1)
			w.Write(workerBin)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	for _, tc := range []struct {
		name      string
		sha       string
		wantOK    bool
		wantFetch int32
	}{
		{"wrong pinned checksum", sum([]byte("another bootstrap")), false, 0},
		{"right pinned checksum", sum(bootstrapBin), true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			v := values{
				bootstrapURL: srv.URL + "/bootstrap", bootstrapSHA256: tc.sha,
				bootstrapPath: filepath.Join(root, "sbin", "buildfleet-bootstrap"),
				workerURL:     srv.URL + "/worker", workerSHA256: sum(workerBin),
				scheduler: "grpc://127.0.0.1:1", tokenFile: filepath.Join(root, "etc", "token"),
				tokenCommand:  "printf %s s3cret-token",
				bootstrapArgs: []string{"--no-systemd", "--packages=none", "--install-path=" + filepath.Join(root, "bin", "worker")},
			}
			before := workerRequests.Load()
			cmd := exec.Command("bash", writeScript(t, render(t, v)))
			out, err := cmd.CombinedOutput()
			t.Logf("user-data output:\n%s", out)
			if (err == nil) != tc.wantOK {
				t.Fatalf("user-data exit: %v, want success=%v", err, tc.wantOK)
			}
			if got := workerRequests.Load() - before; got != tc.wantFetch {
				t.Fatalf("worker fetched %d times, want %d", got, tc.wantFetch)
			}
			if !tc.wantOK {
				want := "buildfleet user-data: sha256 mismatch for " + v.bootstrapURL + ": expected " + tc.sha + ", got " + sum(bootstrapBin)
				if !bytes.Contains(out, []byte(want)) {
					t.Errorf("output does not say %q", want)
				}
				if entries, _ := os.ReadDir(filepath.Join(root, "sbin")); len(entries) != 0 {
					t.Fatalf("unverified bootstrapper left behind: %v", entries)
				}
				return
			}
			if st, err := os.Stat(v.bootstrapPath); err != nil || st.Mode().Perm() != 0o755 {
				t.Fatalf("bootstrapper not installed 0755: %v", err)
			}
			if got, _ := os.ReadFile(filepath.Join(root, "bin", "worker")); !bytes.Equal(got, workerBin) {
				t.Fatalf("worker not installed: %q", got)
			}
			tok, _ := os.ReadFile(v.tokenFile)
			st, _ := os.Stat(v.tokenFile)
			if string(tok) != "s3cret-token" || st.Mode().Perm() != 0o600 {
				t.Fatalf("token file %q mode %v, want the token with 0600", tok, st.Mode().Perm())
			}
		})
	}
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestScriptInstallsFromARelease runs the rendered user-data in release mode against a release
// directory on 127.0.0.1: it checks SHA256SUMS against the pin, takes the bootstrapper's
// sha256 from it, and the bootstrapper installs the worker through the same SHA256SUMS. A wrong
// pin, or a bootstrapper that does not match SHA256SUMS, stops everything before the worker.
func TestScriptInstallsFromARelease(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds the bootstrapper and runs the user-data with bash; skipped with -short")
	}
	for _, tool := range []string{"bash", "curl", "sha256sum", "awk", "sed", "uname"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	bin := filepath.Join(t.TempDir(), "bootstrap-build")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/bootstrap").CombinedOutput(); err != nil {
		t.Fatalf("building ./cmd/bootstrap: %v\n%s", err, out)
	}
	bootstrapBin, _ := os.ReadFile(bin)
	workerBin := []byte("#!/bin/sh\necho released worker\n")
	arch := runtime.GOARCH
	files := map[string][]byte{"bootstrap-linux-" + arch: bootstrapBin, "worker-linux-" + arch: workerBin}
	sumsFor := func(bootstrap []byte) []byte {
		return []byte(sum(bootstrap) + "  bootstrap-linux-" + arch + "\n" + sum(workerBin) + "  worker-linux-" + arch + "\n")
	}
	withoutBootstrap := []byte(sum(workerBin) + "  worker-linux-" + arch + "\n")
	var mu sync.Mutex
	var requests []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/download/v1.2.3/")
		mu.Lock()
		requests = append(requests, name)
		body, ok := files[name]
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()

	for _, tc := range []struct {
		name      string
		sums      []byte // served SHA256SUMS
		pinOf     []byte // what the pin is the sha256 of
		wantOK    bool
		wantFetch string
		machine   string // what a fake `uname -m` prints; the real one when empty
		wantOut   string // in the output when set
	}{
		{"wrong pin", sumsFor(bootstrapBin), sumsFor([]byte("another")), false, "SHA256SUMS", "",
			"buildfleet user-data: sha256 mismatch for " + srv.URL + "/download/v1.2.3/SHA256SUMS: expected " +
				sum(sumsFor([]byte("another"))) + ", got " + sum(sumsFor(bootstrapBin))},
		{"bootstrapper not the one listed", sumsFor([]byte("another")), sumsFor([]byte("another")), false,
			"SHA256SUMS bootstrap-linux-" + arch, "", "buildfleet user-data: sha256 mismatch for " + srv.URL +
				"/download/v1.2.3/bootstrap-linux-" + arch + ": expected " + sum([]byte("another")) + ", got " + sum(bootstrapBin)},
		{"release without this architecture's bootstrapper", withoutBootstrap, withoutBootstrap, false, "SHA256SUMS", "", "has no bootstrap-linux-" + arch},
		{"unsupported machine", sumsFor(bootstrapBin), sumsFor(bootstrapBin), false, "SHA256SUMS", "riscv64",
			"unsupported machine architecture 'riscv64'"},
		{"right pin", sumsFor(bootstrapBin), sumsFor(bootstrapBin), true,
			"SHA256SUMS bootstrap-linux-" + arch + " SHA256SUMS worker-linux-" + arch, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			files["SHA256SUMS"] = tc.sums
			requests = nil
			mu.Unlock()
			root := t.TempDir()
			v := values{
				releaseURL: srv.URL + "/download", releaseVersion: "v1.2.3", sha256sumsSHA256: sum(tc.pinOf),
				bootstrapPath: filepath.Join(root, "sbin", "buildfleet-bootstrap"), scheduler: "grpc://127.0.0.1:1",
				tokenFile:     filepath.Join(root, "etc", "token"),
				bootstrapArgs: []string{"--no-systemd", "--packages=none", "--install-path=" + filepath.Join(root, "bin", "worker")},
			}
			cmd := exec.Command("bash", writeScript(t, render(t, v)))
			if tc.machine != "" {
				fake := t.TempDir()
				if err := os.WriteFile(filepath.Join(fake, "uname"), []byte("#!/bin/sh\necho "+tc.machine+"\n"), 0o755); err != nil {
					t.Fatal(err)
				}
				cmd.Env = append(os.Environ(), "PATH="+fake+string(os.PathListSeparator)+os.Getenv("PATH"))
			}
			out, err := cmd.CombinedOutput()
			t.Logf("user-data output:\n%s", out)
			if (err == nil) != tc.wantOK {
				t.Fatalf("user-data exit: %v, want success=%v", err, tc.wantOK)
			}
			if !bytes.Contains(out, []byte(tc.wantOut)) {
				t.Errorf("output does not say %q", tc.wantOut)
			}
			mu.Lock()
			got := strings.Join(requests, " ")
			mu.Unlock()
			if got != tc.wantFetch {
				t.Fatalf("fetched %q, want %q", got, tc.wantFetch)
			}
			if entries, _ := os.ReadDir(filepath.Join(root, "sbin")); !tc.wantOK && len(entries) != 0 {
				t.Fatalf("left behind in sbin: %v", entries)
			} else if tc.wantOK && len(entries) != 1 {
				t.Fatalf("sbin holds %v, want only the bootstrapper", entries)
			}
			if w, _ := os.ReadFile(filepath.Join(root, "bin", "worker")); tc.wantOK != bytes.Equal(w, workerBin) {
				t.Fatalf("worker installed: %q, want installed=%v", w, tc.wantOK)
			}
		})
	}
}

// TestFetchGivesUpOnAStalledServer runs the rendered user-data against a server on 127.0.0.1 that
// accepts connections and then sends nothing, or stops in the middle of a file: curl gives up on
// each attempt after the stall limit, retries, and the user-data fails naming the URL instead of
// hanging the boot. The test shortens the limits through the environment; the defaults (30 s to
// connect, 60 s without a byte, 8 retries) are checked in the script.
func TestFetchGivesUpOnAStalledServer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the user-data with bash and curl for about 12 s; skipped with -short")
	}
	for _, tool := range []string{"bash", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	script := render(t, values{releaseVersion: "v1.2.3", sha256sumsSHA256: strings.Repeat("a", 64),
		bootstrapPath: filepath.Join(t.TempDir(), "sbin", "buildfleet-bootstrap")})
	for _, want := range []string{"--connect-timeout 30 ", "--speed-limit 1 ", `--speed-time "${BUILDFLEET_FETCH_STALL_SECONDS:-60}"`,
		`--retry "${BUILDFLEET_FETCH_RETRIES:-8}"`} {
		if !strings.Contains(script, want) {
			t.Errorf("fetch() does not have %s by default", want)
		}
	}
	for _, tc := range []struct {
		name    string
		sent    string // what the server sends on each connection before it stalls
		retries int
	}{
		{"no answer", "", 1},
		// curl measures the speed over its last few seconds, so a stall after some bytes is
		// noticed about 5 s later than one before any: no retry there, to keep the test short.
		{"stalls mid-file", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var accepted atomic.Int32
			stop := make(chan struct{})
			var wg sync.WaitGroup
			defer func() { close(stop); lis.Close(); wg.Wait() }()
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					conn, err := lis.Accept()
					if err != nil {
						return
					}
					accepted.Add(1)
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer conn.Close()
						conn.Write([]byte(tc.sent))
						<-stop
					}()
				}
			}()
			v := values{releaseURL: "http://" + lis.Addr().String() + "/download", releaseVersion: "v1.2.3",
				sha256sumsSHA256: strings.Repeat("a", 64), bootstrapPath: filepath.Join(t.TempDir(), "sbin", "buildfleet-bootstrap")}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", writeScript(t, render(t, v)))
			cmd.Env = append(os.Environ(), "BUILDFLEET_FETCH_STALL_SECONDS=1", "BUILDFLEET_FETCH_RETRIES="+strconv.Itoa(tc.retries))
			cmd.WaitDelay = 2 * time.Second
			out, err := cmd.CombinedOutput()
			t.Logf("user-data output:\n%s", out)
			if ctx.Err() != nil {
				t.Fatal("user-data still waiting for the stalled server after 30 s")
			}
			if err == nil {
				t.Fatal("user-data succeeded against a server that sends nothing")
			}
			wantMsg := "buildfleet user-data: cannot download " + v.releaseURL + "/v1.2.3/SHA256SUMS"
			if !bytes.Contains(out, []byte(wantMsg)) {
				t.Errorf("output does not say %q", wantMsg)
			}
			if n := accepted.Load(); n != int32(1+tc.retries) {
				t.Errorf("server accepted %d connections, want %d (the first attempt and %d retries)", n, 1+tc.retries, tc.retries)
			}
		})
	}
}
