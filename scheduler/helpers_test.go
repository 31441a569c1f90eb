package scheduler_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/storage"
)

// memCAS is an in-memory storage.BlobStore.
type memCAS struct {
	mu    sync.Mutex
	blobs map[digest.Digest][]byte
	// findMissingCalls counts FindMissing calls (existence checks).
	findMissingCalls int
}

func newMemCAS() *memCAS { return &memCAS{blobs: map[digest.Digest][]byte{}} }

func (c *memCAS) Get(ctx context.Context, d digest.Digest, offset, limit int64) (io.ReadCloser, error) {
	c.mu.Lock()
	b, ok := c.blobs[d]
	c.mu.Unlock()
	if !ok && !d.IsEmpty() {
		return nil, status.Errorf(codes.NotFound, "blob %s not found", d)
	}
	if offset > int64(len(b)) {
		return nil, status.Errorf(codes.OutOfRange, "offset %d beyond %d", offset, len(b))
	}
	b = b[offset:]
	if limit > 0 && limit < int64(len(b)) {
		b = b[:limit]
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (c *memCAS) Put(ctx context.Context, d digest.Digest, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if digest.FromBytes(b) != d {
		return status.Errorf(codes.InvalidArgument, "content does not match %s", d)
	}
	c.mu.Lock()
	c.blobs[d] = b
	c.mu.Unlock()
	return nil
}

func (c *memCAS) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.findMissingCalls++
	var out []digest.Digest
	for _, d := range ds {
		if _, ok := c.blobs[d]; !ok && !d.IsEmpty() {
			out = append(out, d)
		}
	}
	return out, nil
}

func (c *memCAS) put(t testing.TB, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if err := c.Put(context.Background(), d, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return d
}

func (c *memCAS) putMessage(t testing.TB, m proto.Message) digest.Digest {
	t.Helper()
	b, _, err := digest.FromMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	return c.put(t, b)
}

func (c *memCAS) existenceChecks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.findMissingCalls
}

func (c *memCAS) delete(d digest.Digest) {
	c.mu.Lock()
	delete(c.blobs, d)
	c.mu.Unlock()
}

// memAC is an in-memory storage.ActionCache.
type memAC struct {
	mu      sync.Mutex
	results map[string]*repb.ActionResult
	// gate, when set, is called by Put before it stores anything (see holdPuts).
	gate func()
}

func newMemAC() *memAC { return &memAC{results: map[string]*repb.ActionResult{}} }

func (a *memAC) Get(ctx context.Context, instance string, d digest.Digest) (*repb.ActionResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.results[instance+"|"+d.String()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no result for %s", d)
	}
	return proto.Clone(r).(*repb.ActionResult), nil
}

func (a *memAC) Put(ctx context.Context, instance string, d digest.Digest, r *repb.ActionResult) error {
	a.mu.Lock()
	gate := a.gate
	a.mu.Unlock()
	if gate != nil {
		gate()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.results[instance+"|"+d.String()] = proto.Clone(r).(*repb.ActionResult)
	return nil
}

// holdPuts makes every Put wait until release is called; entered is closed once one waits.
func (a *memAC) holdPuts() (entered <-chan struct{}, release func()) {
	in, out := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a.mu.Lock()
	a.gate = func() {
		once.Do(func() { close(in) })
		<-out
	}
	a.mu.Unlock()
	return in, func() { close(out) }
}

func (a *memAC) get(instance string, d digest.Digest) *repb.ActionResult {
	r, _ := a.Get(context.Background(), instance, d)
	return r
}

// env is a scheduler served over bufconn with clients for every service.
type env struct {
	t     testing.TB
	ctx   context.Context
	clk   *clock.Fake
	cas   *memCAS
	ac    *memAC
	reg   *prometheus.Registry
	sched *scheduler.Scheduler
	exec  repb.ExecutionClient
	ops   longrunningpb.OperationsClient
	bots  rwpb.BotsClient
	stop  func()
}

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newEnv(t testing.TB, cfg scheduler.Config) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, clk: clock.NewFake(epoch), cas: newMemCAS(), ac: newMemAC()}
	e.start(cfg)
	return e
}

// start serves a new Scheduler on e's CAS, AC and clock (stopping the previous one).
func (e *env) start(cfg scheduler.Config) {
	t := e.t
	if e.stop != nil {
		e.stop()
	}
	e.reg = prometheus.NewRegistry()
	logger := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	// Composed as cmd/scheduler composes it: the completeness check decorates the action cache.
	e.sched = scheduler.New(cfg, e.cas, storage.NewCompletenessCheckingActionCache(e.ac, e.cas), e.clk, logger, e.reg)
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	e.sched.Register(srv)
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.exec = repb.NewExecutionClient(conn)
	e.ops = longrunningpb.NewOperationsClient(conn)
	e.bots = rwpb.NewBotsClient(conn)
	sched := e.sched
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		sched.Close()
		conn.Close()
		srv.Stop()
	}
	t.Cleanup(e.stop)
}

// actionOpt adjusts an action and its command before they are stored.
type actionOpt func(a *repb.Action, c *repb.Command)

func withPlatform(kv ...string) actionOpt {
	return func(a *repb.Action, c *repb.Command) {
		a.Platform = platformOf(kv...)
	}
}

func withCommandPlatform(kv ...string) actionOpt {
	return func(a *repb.Action, c *repb.Command) {
		c.Platform = platformOf(kv...)
	}
}

func doNotCache() actionOpt {
	return func(a *repb.Action, c *repb.Command) { a.DoNotCache = true }
}

func platformOf(kv ...string) *repb.Platform {
	p := &repb.Platform{}
	for i := 0; i < len(kv); i += 2 {
		p.Properties = append(p.Properties, &repb.Platform_Property{Name: kv[i], Value: kv[i+1]})
	}
	return p
}

// putAction stores an action running args with a small input root (one file, one
// subdirectory) and returns its digest.
func (e *env) putAction(args string, opts ...actionOpt) digest.Digest {
	t := e.t
	t.Helper()
	file := e.cas.put(t, []byte("input of "+args))
	sub := e.cas.putMessage(t, &repb.Directory{Files: []*repb.FileNode{{Name: "data.txt", Digest: file.Proto()}}})
	root := e.cas.putMessage(t, &repb.Directory{
		Files:       []*repb.FileNode{{Name: "in.txt", Digest: file.Proto(), IsExecutable: true}},
		Directories: []*repb.DirectoryNode{{Name: "sub", Digest: sub.Proto()}},
	})
	a := &repb.Action{InputRootDigest: root.Proto()}
	c := &repb.Command{Arguments: []string{"/bin/sh", "-c", args}, OutputFiles: []string{"out/result.txt"}}
	for _, o := range opts {
		o(a, c)
	}
	a.CommandDigest = e.cas.putMessage(t, c).Proto()
	return e.cas.putMessage(t, a)
}

// execute starts an Execute and returns its stream.
func (e *env) execute(req *repb.ExecuteRequest, md ...string) repb.Execution_ExecuteClient {
	e.t.Helper()
	ctx := e.ctx
	if len(md) > 0 {
		ctx = metadataContext(ctx, md...)
	}
	stream, err := e.exec.Execute(ctx, req)
	if err != nil {
		e.t.Fatalf("Execute: %v", err)
	}
	return stream
}

// run executes action d in instance and returns the stream after its first message.
func (e *env) run(instance string, d digest.Digest) (repb.Execution_ExecuteClient, *longrunningpb.Operation) {
	e.t.Helper()
	s := e.execute(&repb.ExecuteRequest{InstanceName: instance, ActionDigest: d.Proto(), SkipCacheLookup: true})
	return s, recv(e.t, s)
}

// recv receives one operation.
func recv(t testing.TB, s grpc.ServerStreamingClient[longrunningpb.Operation]) *longrunningpb.Operation {
	t.Helper()
	op, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return op
}

// recvUntil receives operations until one is at stage or done, returning it.
func recvUntil(t testing.TB, s grpc.ServerStreamingClient[longrunningpb.Operation], stage repb.ExecutionStage_Value) *longrunningpb.Operation {
	t.Helper()
	for {
		op := recv(t, s)
		if stageOf(t, op) == stage || op.Done {
			return op
		}
	}
}

// recvDone receives operations until the done one, and checks that the stream then ends.
func recvDone(t testing.TB, s grpc.ServerStreamingClient[longrunningpb.Operation]) *longrunningpb.Operation {
	t.Helper()
	for {
		op := recv(t, s)
		if op.Done {
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("stream did not end after the done operation: %v", err)
			}
			return op
		}
	}
}

func stageOf(t testing.TB, op *longrunningpb.Operation) repb.ExecutionStage_Value {
	t.Helper()
	var md repb.ExecuteOperationMetadata
	if err := op.Metadata.UnmarshalTo(&md); err != nil {
		t.Fatalf("metadata of %s: %v", op.Name, err)
	}
	return md.Stage
}

func responseOf(t testing.TB, op *longrunningpb.Operation) *repb.ExecuteResponse {
	t.Helper()
	if !op.Done {
		t.Fatalf("operation %s not done", op.Name)
	}
	if op.GetError() != nil {
		t.Fatalf("operation %s ended with Operation.error %v; REAPI puts every outcome in ExecuteResponse.status", op.Name, op.GetError())
	}
	var resp repb.ExecuteResponse
	if err := op.GetResponse().UnmarshalTo(&resp); err != nil {
		t.Fatalf("response of %s (%v): %v", op.Name, op.Result, err)
	}
	return &resp
}

// cancelled reports whether op ended CANCELLED, in its ExecuteResponse.status (failing the test
// if it carries Operation.error instead).
func cancelled(t testing.TB, op *longrunningpb.Operation) bool {
	t.Helper()
	return codes.Code(responseOf(t, op).GetStatus().GetCode()) == codes.Canceled
}

// bot drives one bot session through the Bots client.
type bot struct {
	e       *env
	id      string
	worker  *rwpb.Worker
	status  rwpb.BotStatus
	session string
	// leases are the leases the bot holds, by id, as it last reported them.
	leases map[string]*rwpb.Lease
	order  []string
}

func (e *env) newBot(id string, capacity int, props ...string) (*bot, *rwpb.BotSession) {
	e.t.Helper()
	dev := &rwpb.Device{Handle: id}
	for i := 0; i < len(props); i += 2 {
		dev.Properties = append(dev.Properties, &rwpb.Device_Property{Key: props[i], Value: props[i+1]})
	}
	b := &bot{e: e, id: id, status: rwpb.BotStatus_OK, leases: map[string]*rwpb.Lease{}, worker: &rwpb.Worker{
		Devices: []*rwpb.Device{dev},
		Configs: []*rwpb.Worker_Config{{Key: "capacity", Value: itoa(capacity)}},
	}}
	got, err := e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{
		Parent:     "farm",
		BotSession: &rwpb.BotSession{Name: "ignored", BotId: id, Status: rwpb.BotStatus_OK, Worker: b.worker},
	})
	if err != nil {
		e.t.Fatalf("CreateBotSession(%s): %v", id, err)
	}
	b.session = got.Name
	b.absorb(got)
	return b, got
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// absorb takes the leases of a reply: new ones are held as PENDING, missing ones dropped.
func (b *bot) absorb(s *rwpb.BotSession) {
	keep := map[string]*rwpb.Lease{}
	b.order = b.order[:0]
	for _, l := range s.Leases {
		if old := b.leases[l.Id]; old != nil {
			keep[l.Id] = old
		} else {
			keep[l.Id] = proto.Clone(l).(*rwpb.Lease)
		}
		b.order = append(b.order, l.Id)
	}
	b.leases = keep
}

// report sends the bot's leases, with changes applied, and returns the reply. A timeout under
// 3 s is never held by the scheduler.
func (b *bot) report(timeout time.Duration, changes ...*rwpb.Lease) (*rwpb.BotSession, error) {
	var leases []*rwpb.Lease
	changed := map[string]*rwpb.Lease{}
	for _, c := range changes {
		changed[c.Id] = c
	}
	for _, id := range b.order {
		if c := changed[id]; c != nil {
			leases = append(leases, c)
			delete(changed, id)
			continue
		}
		l := b.leases[id]
		leases = append(leases, &rwpb.Lease{Id: l.Id, State: l.State})
	}
	for _, c := range changes {
		if changed[c.Id] != nil {
			leases = append(leases, c) // a lease the bot has but the scheduler did not send
		}
	}
	ctx, cancel := context.WithTimeout(b.e.ctx, timeout)
	defer cancel()
	got, err := b.e.bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{
		Name: b.session,
		BotSession: &rwpb.BotSession{
			Name: b.session, BotId: b.id, Status: b.status, Worker: b.worker, Leases: leases,
		},
	})
	if err != nil {
		return nil, err
	}
	for _, c := range changes {
		if c.State == rwpb.LeaseState_ACTIVE {
			if l := b.leases[c.Id]; l != nil {
				l.State = rwpb.LeaseState_ACTIVE
			}
		}
	}
	b.absorb(got)
	return got, nil
}

// update is report with a short timeout (never held), failing the test on error.
func (b *bot) update(changes ...*rwpb.Lease) *rwpb.BotSession {
	b.e.t.Helper()
	got, err := b.report(time.Second, changes...)
	if err != nil {
		b.e.t.Fatalf("UpdateBotSession(%s): %v", b.id, err)
	}
	return got
}

func active(id string) *rwpb.Lease {
	return &rwpb.Lease{Id: id, State: rwpb.LeaseState_ACTIVE}
}

func completed(t testing.TB, id string, result *repb.ActionResult, code codes.Code) *rwpb.Lease {
	t.Helper()
	l := &rwpb.Lease{Id: id, State: rwpb.LeaseState_COMPLETED, Status: &spb.Status{Code: int32(code), Message: code.String()}}
	if result != nil {
		r, err := anypb.New(result)
		if err != nil {
			t.Fatal(err)
		}
		l.Result = r
	}
	return l
}

// leaseAction returns the action digest of a lease's payload.
func leaseAction(t testing.TB, l *rwpb.Lease) digest.Digest {
	t.Helper()
	var a repb.Action
	if err := l.Payload.UnmarshalTo(&a); err != nil {
		t.Fatalf("payload of lease %s: %v", l.Id, err)
	}
	_, d, err := digest.FromMessage(&a)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitFor polls cond (state only, with short real-time waits) until it holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// worker returns the worker view of a bot id.
func (e *env) worker(id string) scheduler.WorkerInfo {
	for _, w := range e.sched.Workers() {
		if w.BotID == id && w.State != scheduler.WorkerGone {
			return w
		}
	}
	for _, w := range e.sched.Workers() {
		if w.BotID == id {
			return w
		}
	}
	return scheduler.WorkerInfo{}
}

// checkStatus compares an error's whole status with want.
func checkStatus(t testing.TB, err error, code codes.Code, msgContains string) *status.Status {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !bytes.Contains([]byte(st.Message()), []byte(msgContains)) {
		t.Fatalf("got status %v: %q, want %v containing %q", st.Code(), st.Message(), code, msgContains)
	}
	return st
}

func metadataContext(ctx context.Context, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// metric returns the value of the metric name whose labels include the given pairs (0 if
// absent).
func (e *env) metric(name string, labels ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}
