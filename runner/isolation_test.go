package runner_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/runner"
)

// canary is a file outside every action directory that actions must neither read nor write.
type canary struct {
	dir, path string
}

func newCanary(t *testing.T) canary {
	t.Helper()
	dir := t.TempDir()
	c := canary{dir: dir, path: filepath.Join(dir, "canary")}
	if err := os.WriteFile(c.path, []byte("canary"), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// check fails the test unless the canary is as it was, alone in its directory.
func (c canary) check(t *testing.T) {
	t.Helper()
	if b, err := os.ReadFile(c.path); err != nil || string(b) != "canary" {
		t.Errorf("canary = %q, %v", b, err)
	}
	if des, _ := os.ReadDir(c.dir); len(des) != 1 {
		t.Errorf("files created beside the canary: %v", des)
	}
}

func TestRunRefusesInputSymlinksThatMayEscape(t *testing.T) {
	f := newFixture(t, nil)
	c := newCanary(t)
	touch := "cat " + c.path + "; echo pwned > " + c.path + "; cat link"
	for _, tc := range []struct {
		at, target, want string
	}{
		{"link", c.path, `Input symlink "link" has an absolute target "` + c.path + `", which escapes the input root (the worker allows only relative targets inside it)`},
		{"link", "../canary", `Input symlink "link" has a target "../canary" leading outside the input root`},
		{"d/link", "../../x", `Input symlink "d/link" has a target "../../x" leading outside the input root`},
		{"d/link", "self/../../x", `Input symlink "d/link" has a target "self/../../x" with ".." after a name, which may escape the input root`},
		{"link", "d/../x", `Input symlink "link" has a target "d/../x" with ".." after a name, which may escape the input root`},
	} {
		t.Run(tc.at+"->"+tc.target, func(t *testing.T) {
			_, err := f.run(context.Background(), shell(touch, "link/out"), map[string]entry{tc.at: {symlink: tc.target}, "d/self": {symlink: "."}}, 0)
			checkStatus(t, err, status.New(codes.InvalidArgument, tc.want))
		})
	}
	// Targets that stay inside are created as given.
	res := f.mustRun(shell("readlink a b/c b/d; cat b/c b/d"), map[string]entry{
		"a": {symlink: "./x"}, "b/c": {symlink: "../x"}, "b/d": {symlink: ".//../x"}, "x": {content: "x\n"}, "b/e": {dir: true},
	})
	if got := f.stdout(res); got != "./x\n../x\n.//../x\nx\nx\n" {
		t.Errorf("stdout = %q", got)
	}
	c.check(t)
}

func TestRunAllowedEscapingSymlinksAreNeverFollowedByTheWorker(t *testing.T) {
	f := newFixture(t, func(c *runner.Config) { c.AllowEscapingSymlinks = true })
	c := newCanary(t)
	// The worker creates output parents and collects outputs beneath the input root only.
	_, err := f.run(context.Background(), shell("true", "link/sub/f"), map[string]entry{"link": {symlink: c.dir}}, 0)
	checkStatus(t, err, status.New(codes.InvalidArgument, `Path "link" resolves outside the action directory`))
	res := f.mustRun(shell("true", "link", "rel"), map[string]entry{"link": {symlink: c.path}, "rel": {symlink: "../../../../../../../../.." + c.path}})
	if got := res.GetOutputSymlinks(); len(got) != 2 || got[0].GetTarget() != c.path {
		t.Errorf("output symlinks = %v", got)
	}
	if len(res.GetOutputFiles()) != 0 {
		t.Errorf("output files = %v", res.GetOutputFiles())
	}
	c.check(t)
}

func requireNamespaces(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if _, err := os.Stat("/proc/self/ns/pid"); err != nil {
		t.Skip("no PID namespaces here")
	}
}

// runAsNobody makes the fixture run actions as the user nobody, and lets that user pass
// through the test's temporary directories to the action directories.
func runAsNobody(t *testing.T, c *runner.Config) {
	t.Helper()
	c.RunAs = nobody(t)
	for _, p := range []string{c.CacheDir, c.AppendOnlyCachesBase} {
		for d := filepath.Dir(p); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o711); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
	}
}

// nobody returns the user nobody.
func nobody(t *testing.T) *runner.User {
	t.Helper()
	u, err := runner.ParseUser("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	return &u
}

func TestRunAsUnprivilegedUser(t *testing.T) {
	requireRoot(t)
	u := nobody(t)
	secret := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(secret, []byte("worker-secret-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *runner.Config) { runAsNobody(t, c) })
	c := newCanary(t)
	cmd := shell(`id -u; id -g; id -G
echo made > in/dir/new && echo made > out/sub/f && echo ok-write
mkdir -p `+f.cfg.AppendOnlyCachesBase+`/cache && echo ok-append-only
echo x >> in/dir/file || echo denied-input
ls `+filepath.Join(f.cfg.CacheDir, "files")+` || echo denied-cache
ls `+filepath.Join(f.cfg.CacheDir, "actions")+` || echo denied-actions
ls .. || echo denied-action-dir
cat `+secret+` || echo denied-token
cat `+c.path+` || echo denied-canary
echo pwned > `+c.path+` || echo denied-canary-write`, "out/sub/f", "in/dir/new")
	res := f.mustRun(cmd, map[string]entry{"in/dir/file": {content: "input\n"}})
	want := strings.Join([]string{strconv.Itoa(int(u.UID)), strconv.Itoa(int(u.GID)), strconv.Itoa(int(u.GID)),
		"ok-write", "ok-append-only", "denied-input", "denied-cache", "denied-actions", "denied-action-dir", "denied-token", "denied-canary", "denied-canary-write"}, "\n") + "\n"
	if got := f.stdout(res); got != want {
		t.Errorf("stdout = %q, want %q (stderr %q)", got, want, f.stderr(res))
	}
	if len(res.GetOutputFiles()) != 2 {
		t.Errorf("outputs = %v", res.GetOutputFiles())
	}
	c.check(t)
	// The input stays intact for the next action.
	res = f.mustRun(shell("cat in/dir/file"), map[string]entry{"in/dir/file": {content: "input\n"}})
	if got := f.stdout(res); got != "input\n" {
		t.Errorf("input after a write attempt = %q", got)
	}
}

// processesRunning returns the pids whose command line contains marker.
func processesRunning(marker string) []int {
	des, _ := os.ReadDir("/proc")
	var pids []int
	for _, de := range des {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + de.Name() + "/cmdline"); err == nil && strings.Contains(string(b), marker) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestRunInNamespaces(t *testing.T) {
	requireNamespaces(t)
	f := newFixture(t, func(c *runner.Config) { c.Sandbox = runner.SandboxNamespaces; runAsNobody(t, c) })
	res := f.mustRun(shell(`echo $$; ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\0' ' '; echo; id -u
ls `+filepath.Join(f.cfg.CacheDir, "files")+` | wc -l; test -e /proc/`+strconv.Itoa(os.Getpid())+` && echo sees-worker; tr '\0' '\n' < /proc/$$/environ`), nil)
	lines := strings.Split(f.stdout(res), "\n")
	// The shell is the init's first child (the init's threads took the pids before it).
	if pid, _ := strconv.Atoi(lines[0]); pid < 2 || pid > 16 {
		t.Errorf("the action's shell has pid %s in its namespace", lines[0])
	}
	if len(lines) != 7 || lines[2] != "buildfleet-sandbox-init " || lines[3] != "65534" || lines[4] != "0" || lines[5] != "PATH=/usr/bin:/bin" {
		t.Errorf("stdout = %q, stderr %q", f.stdout(res), f.stderr(res))
	}
	if n, _ := strconv.Atoi(lines[1]); n > 4 {
		t.Errorf("the action sees %d processes", n)
	}
	// An exit by signal keeps its code.
	res = f.mustRun(shell("kill -9 $$"), nil)
	if res.GetExitCode() != 137 {
		t.Errorf("killed command: exit code %d, want 137", res.GetExitCode())
	}
	// A command that cannot start is the action's fault.
	_, err := f.run(context.Background(), &repb.Command{Arguments: []string{"./missing"}}, nil, 0)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `Failed to start command "./missing"`) {
		t.Errorf("missing command: %v", err)
	}
}

func TestRunKillsProcessesThatLeftTheGroup(t *testing.T) {
	requireRoot(t)
	const marker = "987654.25"
	// Without namespaces a process that calls setsid escapes the process group: the limit
	// SandboxNamespaces lifts. This also proves the check below can see such a process.
	f := newFixture(t, nil)
	escape := "setsid sh -c 'touch started; sleep " + marker + "; :' >/dev/null 2>&1 </dev/null & while [ ! -e started ]; do :; done"
	f.mustRun(shell(escape), nil)
	escaped := processesRunning(marker)
	for _, pid := range escaped {
		_ = syscall.Kill(-pid, syscall.SIGKILL) // The escaped shell leads its own group, with its sleep.
		_ = syscallKill(pid)
	}
	if len(escaped) == 0 {
		t.Fatalf("without a sandbox, %d escaped processes, want some", len(escaped))
	}
	requireNamespaces(t)
	f = newFixture(t, func(c *runner.Config) { c.Sandbox = runner.SandboxNamespaces })
	f.mustRun(shell(escape), nil)
	if left := processesRunning(marker); len(left) != 0 {
		for _, pid := range left {
			_ = syscallKill(pid)
		}
		t.Errorf("processes left after a sandboxed action: %v", left)
	}
}

func TestRunNetworkOff(t *testing.T) {
	requireNamespaces(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := strconv.Itoa(lis.Addr().(*net.TCPAddr).Port)
	connect := `if (exec 3<>/dev/tcp/127.0.0.1/` + port + `) 2>err; then echo connected; else cat err; fi`
	bash := func(props ...string) *repb.Command {
		cmd := &repb.Command{Arguments: []string{"/bin/bash", "-c", connect}, EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: "/usr/bin:/bin"}}}
		if len(props) > 0 {
			cmd.Platform = &repb.Platform{}
			for i := 0; i < len(props); i += 2 {
				cmd.Platform.Properties = append(cmd.Platform.Properties, &repb.Platform_Property{Name: props[i], Value: props[i+1]})
			}
		}
		return cmd
	}
	plain := newFixture(t, nil)
	_, err = plain.run(context.Background(), bash("network", "off"), nil, 0)
	checkStatus(t, err, status.New(codes.InvalidArgument, "The action asks for network=off, but this worker runs actions without a sandbox (--sandbox=namespaces) and cannot turn the network off"))

	f := newFixture(t, func(c *runner.Config) { c.Sandbox = runner.SandboxNamespaces })
	res := f.mustRun(bash(), nil)
	if got := f.stdout(res); got != "connected\n" || accepted.Load() != 1 {
		t.Fatalf("with the network on: stdout %q, %d connections", got, accepted.Load())
	}
	for _, props := range [][]string{{"network", "off"}, {"OSFamily", "linux", "dockerNetwork", "off"}} {
		res := f.mustRun(bash(props...), nil)
		// "Connection refused", not "Network is unreachable": loopback is up, and empty.
		if got := f.stdout(res); !strings.Contains(got, "Connection refused") {
			t.Errorf("%v: stdout %q", props, got)
		}
	}
	// The deprecated Command.platform is read when Action.platform is empty; Action.platform first.
	root := f.cas.putTree(t, nil)
	ad, a := f.cas.putAction(t, bash(), root, 0)
	a.Platform = &repb.Platform{Properties: []*repb.Platform_Property{{Name: "network", Value: "off"}}}
	res, err = f.r.Run(context.Background(), ad, a)
	if err != nil || !strings.Contains(f.stdout(res), "Connection refused") {
		t.Errorf("Action.platform network=off: %v %q", err, f.stdout(res))
	}
	if accepted.Load() != 1 {
		t.Errorf("%d connections reached the host's listener, want 1", accepted.Load())
	}
}

func TestRunSandboxHidesWorkerFiles(t *testing.T) {
	requireNamespaces(t)
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("worker-secret-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	secrets := filepath.Join(dir, "secrets")
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secrets, "cloud"), []byte("cloud-credentials"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The action runs as root here: only the mount namespace keeps it out.
	f := newFixture(t, func(c *runner.Config) {
		c.Sandbox = runner.SandboxNamespaces
		c.HidePaths = []string{token, secrets, filepath.Join(dir, "absent")}
	})
	res := f.mustRun(shell("cat "+token+"; ls "+secrets+"; ls "+filepath.Join(f.cfg.CacheDir, "files")+"; echo done", "out"), map[string]entry{"in": {content: "cached input"}})
	if got := f.stdout(res); got != "done\n" {
		t.Errorf("stdout = %q", got)
	}
	if b, _ := os.ReadFile(token); string(b) != "worker-secret-token" {
		t.Errorf("token file = %q after the action", b)
	}
}

func TestParseUser(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want runner.User
		err  string
	}{
		{spec: "nobody", want: runner.User{UID: 65534, GID: 65534}},
		{spec: "65534", want: runner.User{UID: 65534, GID: 65534}},
		{spec: "1234", want: runner.User{UID: 1234, GID: 1234}},
		{spec: "1234:5", want: runner.User{UID: 1234, GID: 5}},
		{spec: "nobody:root", want: runner.User{UID: 65534, GID: 0}},
		{spec: "root", err: `invalid user "root": actions must not run as root (uid 0); leave --run-as-user empty to run them as the worker's own user`},
		{spec: "0:5", err: `invalid user "0:5": actions must not run as root (uid 0); leave --run-as-user empty to run them as the worker's own user`},
		{spec: "", err: `invalid user "": want NAME, UID, NAME:GROUP or UID:GID`},
		{spec: "1:", err: `invalid user "1:": want NAME, UID, NAME:GROUP or UID:GID`},
		{spec: "no-such-user-here", err: `invalid user "no-such-user-here": user: unknown user no-such-user-here`},
	} {
		got, err := runner.ParseUser(tc.spec)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseUser(%q) = %v, %v; want error %q", tc.spec, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseUser(%q) = %v, %v; want %v", tc.spec, got, err, tc.want)
		}
	}
}

func TestParseSandbox(t *testing.T) {
	for in, want := range map[string]runner.Sandbox{"none": runner.SandboxNone, "": runner.SandboxNone, "namespaces": runner.SandboxNamespaces} {
		if got, err := runner.ParseSandbox(in); err != nil || got != want {
			t.Errorf("ParseSandbox(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := runner.ParseSandbox("docker"); err == nil || err.Error() != `invalid sandbox "docker": want none or namespaces` {
		t.Errorf("ParseSandbox(docker) = %v", err)
	}
}

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
