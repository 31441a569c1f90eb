package worker_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/storage"
	"github.com/buildfleet/buildfleet/worker"
)

// buildGridBots is a Bots server that behaves as BuildGrid does where it differs from
// buildfleet's scheduler: leases are handed out already ACTIVE, and their payload may be an
// Any of the Action's Digest. It hands out each lease once and records what the bot reports.
type buildGridBots struct {
	rwpb.UnimplementedBotsServer
	clk clock.Clock

	mu        sync.Mutex
	pending   []*rwpb.Lease
	held      map[string]bool
	completed map[string]*rwpb.Lease
	created   *rwpb.BotSession
	updates   int
	changed   chan struct{}
}

func (s *buildGridBots) CreateBotSession(ctx context.Context, req *rwpb.CreateBotSessionRequest) (*rwpb.BotSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.created = req.GetBotSession()
	return s.replyLocked("bg/botSessions/1"), nil
}

func (s *buildGridBots) UpdateBotSession(ctx context.Context, req *rwpb.UpdateBotSessionRequest) (*rwpb.BotSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates++
	for _, l := range req.GetBotSession().GetLeases() {
		if l.GetState() == rwpb.LeaseState_COMPLETED && s.held[l.GetId()] {
			delete(s.held, l.GetId())
			s.completed[l.GetId()] = l
		}
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return s.replyLocked(req.GetName()), nil
}

func (s *buildGridBots) replyLocked(name string) *rwpb.BotSession {
	for _, l := range s.pending {
		s.held[l.GetId()] = true
	}
	out := &rwpb.BotSession{Name: name, ExpireTime: timestamppb.New(s.clk.Now().Add(time.Minute)), Leases: s.pending}
	s.pending = nil
	for id := range s.held {
		found := false
		for _, l := range out.Leases {
			found = found || l.GetId() == id
		}
		if !found {
			out.Leases = append(out.Leases, &rwpb.Lease{Id: id, State: rwpb.LeaseState_ACTIVE})
		}
	}
	return out
}

// result waits until lease id is reported COMPLETED (within 15 s of the bubble's clock).
func (s *buildGridBots) result(t *testing.T, id string) *rwpb.Lease {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		s.mu.Lock()
		l, changed := s.completed[id], s.changed
		s.mu.Unlock()
		if l != nil {
			return l
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("lease %s was never completed", id)
		}
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A worker accepts leases handed out ACTIVE whose payload is the Action's digest (reading the
// Action from CAS), reports COMPLETED with an Any of the ActionResult, and completes leases it
// cannot run with the reason: an unknown payload type, an Action missing from CAS.
func TestWorkerAcceptsBuildGridLeases(t *testing.T) {
	bubble(t, func(t *testing.T) {
		log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
		clk := bubbleClock{}
		cas, err := storage.NewDiskBlobStore(t.TempDir(), 1<<20, log, nil)
		if err != nil {
			t.Fatal(err)
		}
		action := &repb.Action{Salt: []byte("from-digest")}
		b, d, _ := digest.FromMessage(action)
		if err := cas.Put(context.Background(), d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		absent := digest.FromBytes([]byte("not an action in CAS"))
		bots := &buildGridBots{clk: clk, held: map[string]bool{}, completed: map[string]*rwpb.Lease{}, changed: make(chan struct{})}
		bots.pending = []*rwpb.Lease{
			{Id: "by-digest", State: rwpb.LeaseState_ACTIVE, Payload: mustAny(t, d.Proto())},
			{Id: "odd-payload", State: rwpb.LeaseState_ACTIVE, Payload: mustAny(t, &repb.Command{})},
			{Id: "absent", State: rwpb.LeaseState_ACTIVE, Payload: mustAny(t, absent.Proto())},
		}

		lis := bufconn.Listen(1 << 20)
		srv := grpc.NewServer()
		rwpb.RegisterBotsServer(srv, bots)
		storage.RegisterServices(srv, cas, nil, storage.ServiceOptions{Logger: log})
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		conn, err := grpc.NewClient("passthrough:///bg", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })

		g := newGateExecutor("w1")
		w, err := worker.New(worker.Config{WorkerID: "w1", Version: "1.2.3-test", InstanceName: "bg", Concurrency: 3, Platform: []worker.Property{{Key: "OSFamily", Value: "linux"}, {Key: "pool", Value: "big"}}}, conn, g, clk, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx, nil) }()
		t.Cleanup(func() { cancel(); <-done })

		ok := bots.result(t, "by-digest")
		var res repb.ActionResult
		if err := ok.GetResult().UnmarshalTo(&res); err != nil || string(res.GetStdoutRaw()) != "from-digest ran on w1" {
			t.Errorf("by-digest: result %v (%v), want the action read from CAS run", ok.GetResult(), err)
		}
		if codes.Code(ok.GetStatus().GetCode()) != codes.OK {
			t.Errorf("by-digest: status %v, want OK", ok.GetStatus())
		}
		if st := status.FromProto(bots.result(t, "odd-payload").GetStatus()); st.Code() != codes.InvalidArgument {
			t.Errorf("odd-payload: status %v, want INVALID_ARGUMENT", st)
		}
		st := status.FromProto(bots.result(t, "absent").GetStatus())
		if st.Code() != codes.FailedPrecondition || len(st.Details()) != 1 {
			t.Fatalf("absent: status %v, want FAILED_PRECONDITION with a PreconditionFailure", st)
		}
		pf, _ := st.Details()[0].(*errdetails.PreconditionFailure)
		if v := pf.GetViolations(); len(v) != 1 || v[0].GetType() != "MISSING" || v[0].GetSubject() != absent.MissingSubject() {
			t.Errorf("absent: violations %v, want MISSING %s", v, absent.MissingSubject())
		}

		bots.mu.Lock()
		created := bots.created
		bots.mu.Unlock()
		dev := created.GetWorker().GetDevices()
		if created.GetBotId() != "w1" || created.GetVersion() != "1.2.3-test" || created.GetStatus() != rwpb.BotStatus_OK || len(dev) != 1 || dev[0].GetHandle() != "w1" {
			t.Fatalf("CreateBotSession: %v", created)
		}
		var props []string
		for _, p := range dev[0].GetProperties() {
			props = append(props, p.GetKey()+"="+p.GetValue())
		}
		if want := []string{"ISA=" + worker.ISA(runtimeGOARCH), "OSFamily=linux", "pool=big"}; !equalStrings(props, want) {
			t.Errorf("device properties %v, want %v", props, want)
		}
		if c := created.GetWorker().GetConfigs(); len(c) != 1 || c[0].GetKey() != "capacity" || c[0].GetValue() != "3" {
			t.Errorf("worker configs %v, want capacity=3", c)
		}
	})
}

// A server that answers at once (BuildGrid while the bot holds leases) is not polled in a
// tight loop: calls that report nothing new are paced on the clock.
func TestWorkerPacesPollsOfServerThatDoesNotHold(t *testing.T) {
	bubble(t, func(t *testing.T) {
		log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
		clk := bubbleClock{}
		bots := &buildGridBots{clk: clk, held: map[string]bool{}, completed: map[string]*rwpb.Lease{}, changed: make(chan struct{})}
		lis := bufconn.Listen(1 << 20)
		srv := grpc.NewServer()
		rwpb.RegisterBotsServer(srv, bots)
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		conn, err := grpc.NewClient("passthrough:///bg", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		w, err := worker.New(worker.Config{WorkerID: "w1"}, conn, newGateExecutor("w1"), clk, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx, nil) }()
		t.Cleanup(func() { cancel(); <-done })
		updates := func() int { bots.mu.Lock(); defer bots.mu.Unlock(); return bots.updates }
		// Once everything has settled without the clock moving, the worker has polled once: a
		// spinning worker would never let the bubble settle, or would have called again.
		synctest.Wait()
		if n := updates(); n != 1 {
			t.Fatalf("%d UpdateBotSession calls without the clock moving, want 1", n)
		}
		clk.Advance(time.Second - time.Millisecond)
		if n := updates(); n != 1 {
			t.Fatalf("%d UpdateBotSession calls within the first second, want 1", n)
		}
		clk.Advance(time.Millisecond)
		if n := updates(); n != 2 {
			t.Fatalf("%d UpdateBotSession calls a second on, want 2", n)
		}
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
