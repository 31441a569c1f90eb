package e2e_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Tokens of the security tests (at least 16 characters, as the token files require).
const (
	ciToken     = "ci-token-0123456789abcdef"
	readerToken = "reader-token-0123456789abcdef"
	workerToken = "worker-token-0123456789abcdef"
	wrongToken  = "wrong-token-0123456789abcdef"
)

// secureScheduler starts a scheduler with TLS and both token files: the CI token may read,
// write and execute on every instance, the reader token only read.
func secureScheduler(t *testing.T, pki testPKI, tls bool, args ...string) *scheduler {
	t.Helper()
	dir := t.TempDir()
	clients := filepath.Join(dir, "client-tokens")
	write(t, clients, "# token instance-pattern permissions\n"+ciToken+" * read,write,execute\n"+readerToken+" * read\n")
	workers := filepath.Join(dir, "worker-tokens")
	write(t, workers, workerToken+"\n")
	flags := []string{"--client-tokens-file=" + clients, "--worker-tokens-file=" + workers}
	if tls {
		flags = append(flags, "--tls-cert="+pki.cert, "--tls-key="+pki.key)
	}
	return startScheduler(t, "", append(flags, args...)...)
}

// isolationFlags returns the worker flags that run actions as nobody in namespaces, when the
// test runs as root (as the worker does in production).
func isolationFlags() []string {
	if os.Geteuid() != 0 {
		return nil
	}
	return []string{"--run-as-user=nobody", "--sandbox=namespaces"}
}

// secureWorker is a worker reaching the scheduler (over grpcs:// when pki is set) with a token, with its cache
// and append-only caches in directories the action user can reach.
type secureWorker struct {
	*process
	cache, appendOnly string
}

func startSecureWorker(t *testing.T, s *scheduler, pki *testPKI, name string, env []string, args ...string) *secureWorker {
	t.Helper()
	base := t.TempDir()
	for d := base; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	w := &secureWorker{cache: filepath.Join(base, "cache"), appendOnly: filepath.Join(base, "append-only")}
	all := append([]string{
		"--scheduler=grpc://" + s.addr,
		"--cache-directory=" + w.cache,
		"--append-only-caches-base-path=" + w.appendOnly,
		"--worker-id=" + name,
		"--cloud=none",
		"--worker-concurrency=4",
	}, args...)
	if pki != nil {
		all = append(all, "--scheduler=grpcs://"+s.addr, "--tls-ca-cert="+pki.ca)
	}
	w.process = start(t, name, filepath.Join(binDir, "worker"), env, all...)
	return w
}

// tokenFile writes token to a private file.
func tokenFile(t *testing.T, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// bearer sends a client token on every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// securePantsClient is a Pants-shaped client over TLS with a bearer token.
func securePantsClient(t *testing.T, s *scheduler, pki testPKI, token, instance string) *pantsClient {
	t.Helper()
	creds, err := credentials.NewClientTLSFromFile(pki.ca, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(bearer(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &pantsClient{
		t: t, conn: conn, instance: instance,
		cas:  repb.NewContentAddressableStorageClient(conn),
		exec: repb.NewExecutionClient(conn),
		ops:  longrunningpb.NewOperationsClient(conn),
	}
}

// TestSecuritySchedulerRefusesOpenRemoteListen starts the scheduler on 0.0.0.0 with no token
// files: it must refuse before it listens.
func TestSecuritySchedulerRefusesOpenRemoteListen(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "scheduler"), fmt.Sprintf("--listen=0.0.0.0:%d", freePort(t)),
		"--metrics-listen=", "--storage-dir="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("scheduler on 0.0.0.0 without tokens: %v, exit %d\n%s", err, cmd.ProcessState.ExitCode(), out)
	}
	if !strings.Contains(string(out), "is not a loopback address and no --client-tokens-file or --worker-tokens-file is set") {
		t.Errorf("output does not explain the refusal:\n%s", out)
	}
	if strings.Contains(string(out), "scheduler serving") {
		t.Errorf("the scheduler served before refusing:\n%s", out)
	}
}

// TestSecurityBazel4OverTLSWithTokens builds with a real Bazel 4.2.3 over grpcs://
// (--tls_certificate) with a bearer token, all actions remote, the workers too reaching the
// scheduler over grpcs://; a wrong token, a read-only token and a missing CA fail, and a worker
// presenting a client token never opens a session. Debian's bazel-bootstrap needs Debian's
// netty-tcnative for TLS (see enableBazel4TLS).
func TestSecurityBazel4OverTLSWithTokens(t *testing.T) {
	bazel := bazel4(t)
	pki := newTestPKI(t)
	s := secureScheduler(t, pki, true)
	impostor := startSecureWorker(t, s, &pki, "impostor", nil, "--auth-token-file="+tokenFile(t, ciToken), "--drain-timeout=2s")
	startSecureWorker(t, s, &pki, "w1", nil, append([]string{"--auth-token-file=" + tokenFile(t, workerToken)}, isolationFlags()...)...)
	w := newWorkspace(t, bazel, 30)
	enableBazel4TLS(t, w)

	w.build("--spawn_strategy=local", "--genrule_strategy=local")
	local := w.outputs()
	w.clean()
	remote := []string{"--remote_executor=grpcs://" + s.addr, "--tls_certificate=" + pki.ca, "--remote_instance_name=secure", "--jobs=16"}
	counts := processCounts(t, w.build(append(remote, "--remote_header=Authorization=Bearer "+ciToken)...))
	if counts["remote"] != w.rules {
		t.Fatalf("remote build over TLS: %v, want %d remote", counts, w.rules)
	}
	sameOutputs(t, local, w.outputs())

	w.clean()
	for _, tc := range []struct {
		name, token, want string
		flags             []string
	}{
		{"wrong token", wrongToken, "UNAUTHENTICATED", remote},
		{"read-only token", readerToken, "PERMISSION_DENIED", remote},
		// Without the CA, Bazel cannot verify the scheduler (and sends no token).
		{"no CA", ciToken, "OpenSslEngine", []string{"--remote_executor=grpcs://" + s.addr, "--remote_instance_name=secure"}},
	} {
		args := append([]string{"build", "--incompatible_strict_action_env", "--color=no", "--curses=no", "--noremote_accept_cached",
			"--remote_header=Authorization=Bearer " + tc.token}, tc.flags...)
		out, err := w.run(append(args, w.target)...)
		if err == nil {
			t.Errorf("%s: Bazel succeeded:\n%s", tc.name, tail(out, 30))
		} else if !strings.Contains(out, tc.want) {
			t.Errorf("%s: Bazel output lacks %s:\n%s", tc.name, tc.want, tail(out, 30))
		}
		if strings.Contains(out, tc.token) {
			t.Errorf("%s: the token appears in Bazel's output", tc.name)
		}
	}

	if !impostor.logContains("PermissionDenied") && !impostor.logContains("Unauthenticated") {
		t.Error("the worker with a client token logged no PERMISSION_DENIED or UNAUTHENTICATED")
	}
	if impostor.logContains("Bot session created") || impostor.logContains("Lease accepted") {
		t.Error("the worker with a client token opened a session or ran an action")
	}
	if s.logContains(ciToken) || s.logContains(workerToken) || s.logContains(wrongToken) {
		t.Error("the scheduler logged a token")
	}
}

// TestSecurityBazel2OverTLS builds with a real Bazel 2.1.0 over grpcs:// (--tls_certificate),
// the worker too reaching the scheduler over grpcs://. Bazel 2.1.0 does not send
// --remote_header on every call (not on GetCapabilities nor ByteStream), so it cannot use
// tokens: the scheduler has none here.
func TestSecurityBazel2OverTLS(t *testing.T) {
	bazel := bazel2(t)
	pki := newTestPKI(t)
	// No token files: TLS alone, on loopback.
	s := startScheduler(t, "", "--tls-cert="+pki.cert, "--tls-key="+pki.key)
	startSecureWorker(t, s, &pki, "w1", nil, isolationFlags()...)
	w := newWorkspace(t, bazel, 20)
	w.build("--spawn_strategy=local", "--genrule_strategy=local")
	local := w.outputs()
	w.clean()
	counts := processCounts(t, w.build("--remote_executor=grpcs://"+s.addr, "--tls_certificate="+pki.ca, "--remote_instance_name=tls", "--jobs=16"))
	if counts["remote"] != w.rules {
		t.Fatalf("remote build over TLS: %v, want %d remote", counts, w.rules)
	}
	sameOutputs(t, local, w.outputs())
	// Without the CA, Bazel cannot verify the scheduler.
	w.clean()
	out, err := w.run("build", "--color=no", "--curses=no", "--remote_executor=grpcs://"+s.addr, "--remote_instance_name=tls", w.target)
	if err == nil {
		t.Errorf("Bazel trusted the scheduler without its CA:\n%s", tail(out, 20))
	}
}

// TestSecurityActionsSeeNoWorkerSecret runs an action on a worker whose token comes from an
// environment variable, then on one whose token is in a file: neither the action's environment
// nor anything it can read holds the token.
func TestSecurityActionsSeeNoWorkerSecret(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	pki := newTestPKI(t)
	s := secureScheduler(t, pki, true)
	file := tokenFile(t, workerToken)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"token in environment", []string{"BUILDFLEET_TEST_WORKER_TOKEN=" + workerToken}, []string{"--auth-token-env-var-name=BUILDFLEET_TEST_WORKER_TOKEN"}},
		{"token in file", nil, []string{"--auth-token-file=" + file}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := startSecureWorker(t, s, &pki, "w-"+strings.ReplaceAll(tc.name, " ", "-"), tc.env, append(tc.args, isolationFlags()...)...)
			c := securePantsClient(t, s, pki, ciToken, "secrets")
			script := `env; tr '\0' '\n' < /proc/self/environ; cat ` + file + `; ls -R ` + w.cache + `/files`
			if os.Geteuid() == 0 {
				// Actions run as nobody in their own namespaces: every process they can see.
				script += `; for p in /proc/[0-9]*; do tr '\0' '\n' < $p/environ; done`
			}
			script = `{ ` + script + `; } > out 2>&1; echo scanned >> out; cp out result.txt`
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			resp := c.execute(ctx, c.action(w.appendOnly, script, time.Minute), nil)
			if resp.GetStatus().GetCode() != 0 {
				t.Fatalf("action failed: %v", resp.GetStatus())
			}
			var found bool
			for _, f := range resp.GetResult().GetOutputFiles() {
				if f.GetPath() != "work/result.txt" {
					continue
				}
				found = true
				out := string(c.read(f.GetDigest()))
				if !strings.HasSuffix(out, "scanned\n") {
					t.Errorf("the action did not finish its scan: %q", out)
				}
				if strings.Contains(out, workerToken) {
					t.Errorf("the action saw the worker token:\n%s", out)
				}
			}
			if !found {
				t.Fatalf("no result.txt output: %v", resp.GetResult())
			}
			if err := w.stop(t, 20*time.Second); err != nil {
				t.Errorf("worker exit: %v", err)
			}
		})
	}
}
