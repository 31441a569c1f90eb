package cloud_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

var start = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// count returns how many log lines contain s.
func (l *logBuffer) count(s string) int {
	return strings.Count(l.String(), s)
}

func newLog(t *testing.T) (zerolog.Logger, *logBuffer) {
	t.Helper()
	b := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", b.String())
		}
	})
	return zerolog.New(b).Level(zerolog.DebugLevel), b
}

// closedAddr returns a loopback host:port on which nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// watching runs src.Watch in the background and returns its notices, a cancel function and a
// channel closed when Watch returns; it stops the source when the test ends and checks that
// Watch returned nil.
func watching(t *testing.T, src cloud.Source) (<-chan cloud.Notice, context.CancelFunc, <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan cloud.Notice, 16)
	done := make(chan struct{})
	var err error
	go func() {
		err = src.Watch(ctx, ch)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
			if err != nil {
				t.Errorf("Watch returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Watch did not return after its context ended")
		}
	})
	return ch, cancel, done
}

func recv(t *testing.T, ch <-chan cloud.Notice) cloud.Notice {
	t.Helper()
	select {
	case n := <-ch:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no notice arrived")
		return cloud.Notice{}
	}
}

func noNotice(t *testing.T, ch <-chan cloud.Notice) {
	t.Helper()
	select {
	case n := <-ch:
		t.Fatalf("unexpected notice %+v", n)
	default:
	}
}

// pollClock is the system clock, counting the timers a source arms: a source arms one after
// each poll, once the poll's notices are sent. Tests wait for polls with it instead of
// sleeping through a fixed window.
type pollClock struct {
	mu    sync.Mutex
	armed int
	// changed is closed and replaced whenever a timer is armed.
	changed chan struct{}
}

func newPollClock() *pollClock { return &pollClock{changed: make(chan struct{})} }

func (c *pollClock) Now() time.Time { return clock.System.Now() }

func (c *pollClock) NewTimer(d time.Duration) (clock.Timer, <-chan time.Time) {
	c.mu.Lock()
	c.armed++
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return clock.System.NewTimer(d)
}

func (c *pollClock) NewTicker(d time.Duration) (clock.Ticker, <-chan time.Time) {
	return clock.System.NewTicker(d)
}

// waitPolls waits until the source has finished n more polls (armed n more timers), failing
// the test if it has not within 15 s.
func (c *pollClock) waitPolls(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	want := c.armed + n
	c.mu.Unlock()
	timeout := time.After(15 * time.Second)
	for {
		c.mu.Lock()
		got, changed := c.armed, c.changed
		c.mu.Unlock()
		if got >= want {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("the source polled %d times in 15 s, want %d", got-(want-n), n)
		}
	}
}

// step advances clk by d and waits until the code under test has run and armed its next timer.
func step(t *testing.T, clk *clock.Fake, d time.Duration) {
	t.Helper()
	armed := clk.Armed()
	clk.Advance(d)
	select {
	case <-armed:
	case <-time.After(10 * time.Second):
		t.Fatal("the source did not wait on the clock again")
	}
}

// fakeIMDS is an IMDSv2-only instance metadata service: a PUT /latest/api/token with a TTL
// header grants a token, and every GET must carry a granted token (401 otherwise).
type fakeIMDS struct {
	srv *httptest.Server

	mu          sync.Mutex
	values      map[string]string // full path → body; absent: 404
	tokens      map[string]bool
	tokenPuts   int
	gets        map[string]int
	noTokenGets int
}

func newFakeIMDS(t *testing.T) *fakeIMDS {
	f := &fakeIMDS{values: map[string]string{}, tokens: map[string]bool{}, gets: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// startFakeIMDSAt starts a fakeIMDS listening on addr.
func startFakeIMDSAt(t *testing.T, addr string) *fakeIMDS {
	f := &fakeIMDS{values: map[string]string{}, tokens: map[string]bool{}, gets: map[string]int{}}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Listener.Close()
	f.srv.Listener = l
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeIMDS) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
		ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "bad ttl", http.StatusBadRequest)
			return
		}
		f.tokenPuts++
		tok := fmt.Sprintf("token-%d", f.tokenPuts)
		f.tokens[tok] = true
		w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
		io.WriteString(w, tok)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	if !f.tokens[r.Header.Get("X-aws-ec2-metadata-token")] {
		f.noTokenGets++
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	f.gets[r.URL.Path]++
	v, ok := f.values[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	io.WriteString(w, v)
}

// set serves body at the metadata path p (under /latest/meta-data/).
func (f *fakeIMDS) set(p, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values["/latest/meta-data/"+p] = body
}

// setRaw serves body at the full path p.
func (f *fakeIMDS) setRaw(p, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[p] = body
}

// expireTokens invalidates every token granted so far, as their TTL running out would.
func (f *fakeIMDS) expireTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = map[string]bool{}
}

func (f *fakeIMDS) stats() (tokenPuts, noTokenGets int, gets map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := map[string]int{}
	for k, v := range f.gets {
		g[k] = v
	}
	return f.tokenPuts, f.noTokenGets, g
}

// fakeGCE is a GCE metadata server: it insists on Metadata-Flavor: Google, answers with ETags and
// holds wait_for_change requests until the value's ETag differs from last_etag.
type fakeGCE struct {
	srv *httptest.Server

	mu        sync.Mutex
	values    map[string]string // path under /computeMetadata/v1/ → value
	etags     map[string]int
	changed   chan struct{}
	noFlavor  int
	waits     map[string][]string // path → last_etag of each wait_for_change request
	stop      chan struct{}
	stopOnce  sync.Once
	waitAdded chan struct{}
}

func newFakeGCE(t *testing.T) *fakeGCE {
	f := &fakeGCE{values: map[string]string{}, etags: map[string]int{}, changed: make(chan struct{}),
		waits: map[string][]string{}, stop: make(chan struct{}), waitAdded: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.stopOnce.Do(func() { close(f.stop) })
		f.srv.Close()
	})
	return f
}

func (f *fakeGCE) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeGCE) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Metadata-Flavor", "Google")
	f.mu.Lock()
	if r.Header.Get("Metadata-Flavor") != "Google" {
		f.noFlavor++
		f.mu.Unlock()
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	wait := r.URL.Query().Get("wait_for_change") == "true"
	last := r.URL.Query().Get("last_etag")
	if wait {
		f.waits[p] = append(f.waits[p], last)
		close(f.waitAdded)
		f.waitAdded = make(chan struct{})
	}
	for {
		v, ok := f.values[p]
		etag := fmt.Sprintf("etag-%d", f.etags[p])
		if !ok {
			f.mu.Unlock()
			http.NotFound(w, r)
			return
		}
		if !wait || etag != last {
			f.mu.Unlock()
			w.Header().Set("ETag", etag)
			io.WriteString(w, v)
			return
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-f.stop:
			return
		}
		f.mu.Lock()
	}
}

// set changes the value at p (a new ETag even when the value is the same) and wakes waiters.
func (f *fakeGCE) set(p, v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[p] = v
	f.etags[p]++
	close(f.changed)
	f.changed = make(chan struct{})
}

// etag returns the current ETag of p.
func (f *fakeGCE) etag(p string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("etag-%d", f.etags[p])
}

// awaitWait blocks until a wait_for_change request for p with last_etag etag has arrived.
func (f *fakeGCE) awaitWait(t *testing.T, p, etag string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		f.mu.Lock()
		for _, e := range f.waits[p] {
			if e == etag {
				f.mu.Unlock()
				return
			}
		}
		added := f.waitAdded
		f.mu.Unlock()
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("no wait_for_change request for %s with last_etag %s", p, etag)
		}
	}
}

// fakeAzure is an Azure Instance Metadata Service serving Scheduled Events. It insists on the
// Metadata: true header and records acknowledgements.
type fakeAzure struct {
	srv *httptest.Server

	mu       sync.Mutex
	doc      string
	vmName   string
	noHeader int
	acks     [][]string
	polls    int
}

func newFakeAzure(t *testing.T) *fakeAzure {
	f := &fakeAzure{doc: `{"DocumentIncarnation":0,"Events":[]}`, vmName: "worker-1"}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAzure) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Metadata") != "true" {
		f.noHeader++
		http.Error(w, `{"error":"Bad request. Required metadata header not specified"}`, http.StatusBadRequest)
		return
	}
	switch {
	case r.URL.Path == "/metadata/scheduledevents" && r.URL.Query().Get("api-version") == "2020-07-01":
		switch r.Method {
		case http.MethodGet:
			f.polls++
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, f.doc)
		case http.MethodPost:
			var body struct {
				StartRequests []struct {
					EventID string `json:"EventId"`
				} `json:"StartRequests"`
			}
			if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			var ids []string
			for _, s := range body.StartRequests {
				ids = append(ids, s.EventID)
			}
			f.acks = append(f.acks, ids)
		default:
			http.Error(w, "method", http.StatusMethodNotAllowed)
		}
	case r.URL.Path == "/metadata/instance/compute/name":
		io.WriteString(w, f.vmName)
	case r.URL.Path == "/metadata/instance":
		fmt.Fprintf(w, `{"compute":{"name":%q,"location":"westeurope"}}`, f.vmName)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeAzure) setDoc(doc string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.doc = doc
}

func (f *fakeAzure) stats() (noHeader int, acks [][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.noHeader, append([][]string(nil), f.acks...)
}
