package bootstrap_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/bootstrap"
	"github.com/buildfleet/buildfleet/internal/clock"
)

// binaryServer serves one file at /worker on 127.0.0.1 and counts requests.
type binaryServer struct {
	*httptest.Server
	mu       sync.Mutex
	content  []byte
	requests atomic.Int32
	// handle, when set, answers instead of the default for request number n (from 1).
	handle func(n int32, w http.ResponseWriter, r *http.Request) bool
}

func newBinaryServer(t *testing.T, content []byte) *binaryServer {
	s := &binaryServer{content: content}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.requests.Add(1)
		if s.handle != nil && s.handle(n, w, r) {
			return
		}
		s.mu.Lock()
		body := s.content
		s.mu.Unlock()
		w.Header().Set("Content-Length", itoa(len(body)))
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *binaryServer) set(content []byte) {
	s.mu.Lock()
	s.content = content
	s.mu.Unlock()
}

func (s *binaryServer) workerURL() string { return s.URL + "/worker" }

func itoa(n int) string {
	b := []byte{}
	if n == 0 {
		return "0"
	}
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// fakeRunner records commands instead of running them. answer decides each command's result
// and may write to its Stdout.
type fakeRunner struct {
	mu     sync.Mutex
	cmds   []string
	answer func(c bootstrap.Command) error
}

func (r *fakeRunner) Run(_ context.Context, c bootstrap.Command) error {
	r.mu.Lock()
	r.cmds = append(r.cmds, c.String())
	r.mu.Unlock()
	if r.answer != nil {
		return r.answer(c)
	}
	return nil
}

func (r *fakeRunner) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.cmds
	r.cmds = nil
	return out
}

// without drops the installed-check queries from cmds.
func without(cmds []string, prefix string) []string {
	var out []string
	for _, c := range cmds {
		if !strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// fakeExecer records the exec it was asked for.
type fakeExecer struct {
	path       string
	argv, env  []string
	calledWith bool
}

func (e *fakeExecer) Exec(path string, argv, env []string) error {
	e.path, e.argv, e.env, e.calledWith = path, argv, env, true
	return nil
}

// lookPathOnly finds only the named programs.
func lookPathOnly(names ...string) func(string) (string, error) {
	return func(n string) (string, error) {
		for _, m := range names {
			if m == n {
				return "/usr/bin/" + n, nil
			}
		}
		return "", os.ErrNotExist
	}
}

// accounts is a fake user database where useradd (through fakeRunner) adds users.
type accounts struct {
	mu    sync.Mutex
	users map[string]*user.User
}

func (a *accounts) lookup(name string) (*user.User, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if u, ok := a.users[name]; ok {
		return u, nil
	}
	return nil, user.UnknownUserError(name)
}

func (a *accounts) add(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.users == nil {
		a.users = map[string]*user.User{}
	}
	a.users[name] = &user.User{Username: name, Uid: "998", Gid: "997"}
}

// env is a test machine: temp root, fake runner, fake accounts, fake chown and clock.
type env struct {
	root    string
	runner  *fakeRunner
	accts   *accounts
	execer  *fakeExecer
	chowns  map[string][2]int
	out     strings.Builder
	clock   *clock.Fake
	mu      sync.Mutex
	missing map[string]bool // packages dpkg-query reports as not installed
}

func newEnv(t *testing.T) *env {
	e := &env{root: t.TempDir(), accts: &accounts{}, execer: &fakeExecer{}, chowns: map[string][2]int{},
		clock: clock.NewFake(testEpoch), missing: map[string]bool{}}
	e.runner = &fakeRunner{answer: func(c bootstrap.Command) error {
		switch c.Name {
		case "dpkg-query":
			pkg := c.Args[len(c.Args)-1]
			e.mu.Lock()
			miss := e.missing[pkg]
			e.mu.Unlock()
			if miss {
				return os.ErrNotExist
			}
			c.Stdout.Write([]byte("installed"))
		case "apt-get":
			if c.Args[2] == "install" {
				e.mu.Lock()
				for _, p := range c.Args[6:] {
					delete(e.missing, p)
				}
				e.mu.Unlock()
			}
		case "useradd":
			e.accts.add(c.Args[len(c.Args)-1])
		}
		return nil
	}}
	return e
}

func (e *env) path(p string) string { return filepath.Join(e.root, p) }

func (e *env) deps(src bootstrap.Source) bootstrap.Dependencies {
	return bootstrap.Dependencies{
		Source:     src,
		Runner:     e.runner,
		Execer:     e.execer,
		LookPath:   lookPathOnly("apt-get"),
		LookupUser: e.accts.lookup,
		Chown: func(path string, uid, gid int) error {
			e.mu.Lock()
			e.chowns[path] = [2]int{uid, gid}
			e.mu.Unlock()
			return nil
		},
		Environ: func() []string { return []string{"PATH=/usr/bin", "BUILDFLEET_SCHEDULER=grpc://old:1"} },
		Clock:   e.clock,
		Out:     &e.out,
	}
}

// config returns a Config whose every path is under the env's root.
func (e *env) config(url, sum string) bootstrap.Config {
	return bootstrap.Config{
		WorkerURL:                url,
		WorkerSHA256:             sum,
		InstallPath:              e.path("usr/local/bin/worker"),
		SystemdDir:               e.path("etc/systemd/system"),
		EnvironmentFile:          e.path("etc/buildfleet/worker.env"),
		CacheDirectory:           e.path("var/cache/buildfleet-worker"),
		AppendOnlyCachesBasePath: e.path("toolchain/caches"),
		User:                     "buildfleet",
		CreateUser:               true,
		Scheduler:                "grpc://scheduler.internal:8980",
		Packages:                 []string{"default"},
	}
}

func httpSource() bootstrap.Source {
	return &bootstrap.SchemeSource{HTTP: &bootstrap.HTTPSource{}}
}

func run(t *testing.T, e *env, c bootstrap.Config, src bootstrap.Source) error {
	t.Helper()
	b, err := bootstrap.New(c, e.deps(src), zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b.Run(context.Background())
}
