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
	for _, o := range opts {
		if o.clk != nil {
			clk = o.clk
		}
		if o.advertise != "" {
			cfg.AdvertiseAddress = o.advertise
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
	r.node = cluster.New(cfg, cli, newSched, clk, logger)
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
