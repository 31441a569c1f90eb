package cluster_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/clustertest"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/storage"
)

// shared is the storage every replica of a test serves (the shared bucket of a deployment).
type shared struct {
	cas storage.BlobStore
	ac  storage.ActionCache
}

func newShared(t testing.TB) *shared {
	t.Helper()
	dir := t.TempDir()
	cas, err := storage.NewDiskBlobStore(dir+"/cas", 1<<30, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := storage.NewDiskActionCache(dir+"/ac", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return &shared{cas: cas, ac: ac}
}

func (s *shared) put(t testing.TB, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if err := s.cas.Put(context.Background(), d, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return d
}

func (s *shared) putMessage(t testing.TB, m proto.Message) digest.Digest {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return s.put(t, b)
}

// putAction stores an action (empty input root) running args, and returns its digest.
func (s *shared) putAction(t testing.TB, args string) digest.Digest {
	t.Helper()
	root := s.putMessage(t, &repb.Directory{})
	cmd := s.putMessage(t, &repb.Command{Arguments: []string{"/bin/sh", "-c", args}})
	return s.putMessage(t, &repb.Action{CommandDigest: cmd.Proto(), InputRootDigest: root.Proto()})
}

// replica is one scheduler replica of a test, serving on its own 127.0.0.1 port.
type replica struct {
	t      testing.TB
	addr   string
	node   *cluster.Node
	reg    *prometheus.Registry
	cli    interface{ Close() error }
	srv    *grpc.Server
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	// httpAddr is the address of its HTTP server (replicaOpts.http).
	httpAddr string
	// logs holds what the replica logged (warnings and errors).
	logs *syncBuffer
	mu   sync.Mutex
	// scheds and fences are the schedulers of the terms the replica led and their fences.
	scheds []*scheduler.Scheduler
	fences []func() error
	// headers are the "x-test" metadata values of the streams the replica received, each
	// suffixed "+forwarded" when the call came from another replica.
	headers chan string
}

// replicaOpts are the optional settings of startReplica.
type replicaOpts struct {
	// clk is the replica's clock (default: the system's).
	clk clock.Clock
	// advertise is the advertise address (default: the replica's own).
	advertise string
	// http starts an HTTP server with /workers and /readyz (replica.httpAddr).
	http bool
	// net, if set, carries the replica's connections to other replicas (a cuttable network).
	net *cuttableNet
}

// cuttableNet dials the replicas' connections to each other; cut stands in for a network
// partition between one replica and the address of another.
type cuttableNet struct {
	mu    sync.Mutex
	cut   map[string]bool
	conns map[string][]net.Conn
}

func newCuttableNet() *cuttableNet {
	return &cuttableNet{cut: map[string]bool{}, conns: map[string][]net.Conn{}}
}

func (c *cuttableNet) dialOption() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.cut[addr] {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: io.ErrClosedPipe}
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.conns[addr] = append(c.conns[addr], conn)
		}
		return conn, err
	})
}

// cutOff closes the connections to addr and refuses new ones.
func (c *cuttableNet) cutOff(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut[addr] = true
	for _, conn := range c.conns[addr] {
		conn.Close()
	}
}

// startReplica starts a replica of etcd e serving s; cfg's Endpoints are filled in, and its
// AdvertiseAddress too unless set (a test of a wrong one).
func startReplica(t testing.TB, e *clustertest.Etcd, s *shared, cfg cluster.Config, sc scheduler.Config, opts ...replicaOpts) *replica {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var clk clock.Clock = clock.System
	var httpLis net.Listener
	var dialOpts []grpc.DialOption
	for _, o := range opts {
		if o.clk != nil {
			clk = o.clk
		}
		if o.advertise != "" {
			cfg.AdvertiseAddress = o.advertise
		}
		if o.net != nil {
			dialOpts = append(dialOpts, o.net.dialOption())
		}
		if o.http {
			if httpLis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
			cfg.AdvertiseHTTPAddress = httpLis.Addr().String()
		}
	}
	r := &replica{t: t, addr: lis.Addr().String(), reg: prometheus.NewRegistry(), done: make(chan struct{}), logs: &syncBuffer{}}
	if cfg.AdvertiseAddress == "" {
		cfg.AdvertiseAddress = r.addr
	}
	cfg.Endpoints = []string{e.Endpoint}
	logger := zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), r.logs)).Level(zerolog.WarnLevel).With().Str("replica", r.addr).Logger()
	newSched := func(fence func() error) *scheduler.Scheduler {
		sc := sc
		sc.Fence = fence
		sched := scheduler.New(sc, s.cas, s.ac, clk, logger, r.reg)
		r.mu.Lock()
		r.scheds = append(r.scheds, sched)
		r.fences = append(r.fences, fence)
		r.mu.Unlock()
		return sched
	}
	cli := e.Client(t)
	r.cli = cli
	r.node = cluster.New(cfg, cli, newSched, clk, logger, dialOpts...)
	if httpLis != nil {
		r.httpAddr = httpLis.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("/workers", r.node.WorkersHandler())
		mux.Handle("/readyz", r.node.ReadyHandler())
		hs := &http.Server{Handler: mux}
		go hs.Serve(httpLis)
		t.Cleanup(func() { hs.Close() })
	}
	r.headers = make(chan string, 100)
	r.srv = grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		for _, v := range md.Get("x-test") {
			if len(md.Get("x-buildfleet-forwarded")) > 0 {
				v += "+forwarded"
			}
			select {
			case r.headers <- v:
			default:
			}
		}
		return h(srv, ss)
	}))
	storage.RegisterServices(r.srv, s.cas, s.ac, storage.ServiceOptions{ExecutionEnabled: true, Logger: logger})
	r.node.Register(r.srv)
	go r.srv.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.node.Run(ctx); close(r.done) }()
	t.Cleanup(r.stop)
	return r
}

// stop shuts the replica down cleanly (it resigns).
func (r *replica) stop() {
	r.once.Do(func() {
		r.cancel()
		<-r.done
		r.srv.Stop()
	})
}

// crash makes the replica vanish as if SIGKILLed: its port closes at once and it stops
// renewing its etcd session, so the others wait for the session TTL.
func (r *replica) crash() {
	r.once.Do(func() {
		r.srv.Stop()
		r.cli.Close()
		r.cancel()
		<-r.done
	})
}

func (r *replica) leads() bool {
	_, ok := r.node.Leader()
	return ok
}

func (r *replica) conn(t testing.TB) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient("passthrough:///"+r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// counter reads a counter of the replica's registry (0 when absent).
func (r *replica) counter(name string) float64 {
	mfs, _ := r.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.Metric {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}

// waitFor polls cond every 10 ms until it holds or within passes.
func waitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// bot is a hand-driven Remote Workers API client.
type bot struct {
	t       testing.TB
	bots    rwpb.BotsClient
	id      string
	session string
	leases  []*rwpb.Lease
}

func newBot(t testing.TB, c *grpc.ClientConn, id string) *bot {
	t.Helper()
	b := &bot{t: t, bots: rwpb.NewBotsClient(c), id: id}
	s, err := b.bots.CreateBotSession(context.Background(), &rwpb.CreateBotSessionRequest{
		Parent: "farm", BotSession: &rwpb.BotSession{BotId: id, Status: rwpb.BotStatus_OK},
	})
	if err != nil {
		t.Fatalf("CreateBotSession: %v", err)
	}
	b.session, b.leases = s.Name, s.Leases
	return b
}

// update reports leases (nil: what the bot holds, as ACTIVE) and returns the reply.
func (b *bot) update(timeout time.Duration, leases []*rwpb.Lease) (*rwpb.BotSession, error) {
	if leases == nil {
		for _, l := range b.leases {
			leases = append(leases, &rwpb.Lease{Id: l.Id, State: rwpb.LeaseState_ACTIVE})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := b.bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{Name: b.session, BotSession: &rwpb.BotSession{
		Name: b.session, BotId: b.id, Status: rwpb.BotStatus_OK, Leases: leases,
	}})
	if err == nil {
		b.leases = s.Leases
	}
	return s, err
}

func recvOp(t testing.TB, s grpc.ServerStreamingClient[longrunningpb.Operation]) *longrunningpb.Operation {
	t.Helper()
	op, err := s.Recv()
	if err != nil {
		t.Fatalf("operation stream: %v", err)
	}
	return op
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// tcpProxy is an in-process TCP proxy on 127.0.0.1: it stands in for a load balancer (round
// robin over its backends) or for the network between replicas (pause freezes every
// connection through it: TCP stays up, no byte passes, as to a SIGSTOPped process).
type tcpProxy struct {
	t    testing.TB
	lis  net.Listener
	addr string

	mu       sync.Mutex
	backends []string
	next     int
	paused   bool
	resumed  chan struct{}
	conns    []net.Conn
	// ready is closed once backends are set; connections accepted before wait for it.
	ready     chan struct{}
	readyOnce sync.Once
}

func startProxy(t testing.TB) *tcpProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{t: t, lis: lis, addr: lis.Addr().String(), ready: make(chan struct{}), resumed: make(chan struct{})}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// setBackends sets the addresses connections are sent to, in turn.
func (p *tcpProxy) setBackends(addrs ...string) {
	p.mu.Lock()
	p.backends = addrs
	p.mu.Unlock()
	p.readyOnce.Do(func() { close(p.ready) })
}

// pause stops every byte through the proxy until resume; connections stay open.
func (p *tcpProxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		p.paused = true
		p.resumed = make(chan struct{})
	}
}

func (p *tcpProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		p.paused = false
		close(p.resumed)
	}
}

// gate waits while the proxy is paused.
func (p *tcpProxy) gate() {
	p.mu.Lock()
	paused, ch := p.paused, p.resumed
	p.mu.Unlock()
	if paused {
		<-ch
	}
}

func (p *tcpProxy) serve() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *tcpProxy) handle(c net.Conn) {
	<-p.ready
	p.gate()
	p.mu.Lock()
	if len(p.backends) == 0 {
		p.mu.Unlock()
		c.Close()
		return
	}
	backend := p.backends[p.next%len(p.backends)]
	p.next++
	p.mu.Unlock()
	u, err := net.Dial("tcp", backend)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	cp := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p.gate()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	go cp(u, c)
	go cp(c, u)
}

// close stops the proxy and closes every connection through it.
func (p *tcpProxy) close() {
	p.lis.Close()
	p.resume()
	p.readyOnce.Do(func() { close(p.ready) })
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}
