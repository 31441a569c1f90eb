package console_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/buildfleet/buildfleet/auth"
	"github.com/buildfleet/buildfleet/console"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/storage"
)

// epoch is the fake clock's start.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// env is a real scheduler with disk storage, served over bufconn, and the console over it.
type env struct {
	t     *testing.T
	ctx   context.Context
	clk   *clock.Fake
	cas   storage.BlobStore
	ac    storage.ActionCache
	sched *scheduler.Scheduler
	exec  repb.ExecutionClient
	acc   repb.ActionCacheClient
	bots  rwpb.BotsClient
	// authz is the authorizer of the last tokenConsole.
	authz *auth.Authorizer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	logger := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	dir := t.TempDir()
	cas, err := storage.NewDiskBlobStore(dir+"/cas", 1<<30, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	diskAC, err := storage.NewDiskActionCache(dir+"/ac", logger)
	if err != nil {
		t.Fatal(err)
	}
	ac := storage.NewCompletenessCheckingActionCache(diskAC, cas)
	e := &env{t: t, ctx: ctx, clk: clock.NewFake(epoch), cas: cas, ac: ac}
	e.sched = scheduler.New(scheduler.Config{SessionExpiry: time.Minute}, cas, ac, e.clk, logger, nil)
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	storage.RegisterServices(srv, cas, e.sched.RecordingActionCache(ac), storage.ServiceOptions{ExecutionEnabled: true, Logger: logger})
	e.sched.Register(srv)
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.sched.Close(); conn.Close(); srv.Stop() })
	e.exec, e.acc, e.bots = repb.NewExecutionClient(conn), repb.NewActionCacheClient(conn), rwpb.NewBotsClient(conn)
	return e
}

// console returns a console over e with auth (nil: no token files).
func (e *env) console(a console.Authenticator) *console.Console {
	return console.New(console.Options{Scheduler: e.sched, CAS: e.cas, ActionCache: e.ac, Auth: a, Clock: e.clk,
		Logger: zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel)})
}

// put stores b in the CAS.
func (e *env) put(b []byte) digest.Digest {
	e.t.Helper()
	d := digest.FromBytes(b)
	if err := e.cas.Put(e.ctx, d, bytes.NewReader(b)); err != nil {
		e.t.Fatal(err)
	}
	return d
}

// putMessage stores a proto message in the CAS.
func (e *env) putMessage(m proto.Message) digest.Digest {
	e.t.Helper()
	b, _, err := digest.FromMessage(m)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.put(b)
}

// putAction stores an action running argv over an input root with a text file in src/, a
// binary file and an executable script, and returns its digest.
func (e *env) putAction(argv ...string) digest.Digest {
	e.t.Helper()
	text := e.put([]byte("hello from " + strings.Join(argv, " ") + "\n"))
	bin := e.put([]byte{0x7f, 'E', 'L', 'F', 0, 1, 2, 3, 0xff, 0xfe})
	src := e.putMessage(&repb.Directory{Files: []*repb.FileNode{{Name: "main.c", Digest: text.Proto()}}})
	root := e.putMessage(&repb.Directory{
		Files: []*repb.FileNode{
			{Name: "tool.bin", Digest: bin.Proto()},
			{Name: "run.sh", Digest: text.Proto(), IsExecutable: true},
		},
		Directories: []*repb.DirectoryNode{{Name: "src", Digest: src.Proto()}},
	})
	cmd := e.putMessage(&repb.Command{
		Arguments:            argv,
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: "/bin:/usr/bin"}},
		OutputFiles:          []string{"out.txt"},
	})
	return e.putMessage(&repb.Action{CommandDigest: cmd.Proto(), InputRootDigest: root.Proto()})
}

// clientCtx returns a context carrying Bazel's RequestMetadata for invocation and mnemonic.
func (e *env) clientCtx(invocation, mnemonic, target string) context.Context {
	b, err := proto.Marshal(&repb.RequestMetadata{
		ToolDetails:      &repb.ToolDetails{ToolName: "bazel", ToolVersion: "4.2.3"},
		ToolInvocationId: invocation, ActionMnemonic: mnemonic, TargetId: target,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return metadata.AppendToOutgoingContext(e.ctx, "build.bazel.remote.execution.v2.requestmetadata-bin", string(b))
}

// execute starts executing action d in instance for a client of invocation, and waits until the
// scheduler has queued it.
func (e *env) execute(instance string, d digest.Digest, invocation, mnemonic, target string) repb.Execution_ExecuteClient {
	e.t.Helper()
	s, err := e.exec.Execute(e.clientCtx(invocation, mnemonic, target), &repb.ExecuteRequest{InstanceName: instance, ActionDigest: d.Proto()})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		e.t.Fatalf("Execute(%s): %v", d, err)
	}
	return s
}

// drain reads the stream to its end.
func drain(t *testing.T, s repb.Execution_ExecuteClient) {
	t.Helper()
	for {
		if _, err := s.Recv(); err == io.EOF {
			return
		} else if err != nil {
			t.Fatalf("Recv: %v", err)
		}
	}
}

// bot is one bot session driven by the test.
type bot struct {
	e       *env
	id      string
	session string
	worker  *rwpb.Worker
	status  rwpb.BotStatus
}

// newBot opens a session for a bot of capacity slots and returns it with the leases it got.
func (e *env) newBot(id string, capacity int) (*bot, []*rwpb.Lease) {
	e.t.Helper()
	w := &rwpb.Worker{
		Devices: []*rwpb.Device{{Handle: id, Properties: []*rwpb.Device_Property{{Key: "OSFamily", Value: "linux"}}}},
		Configs: []*rwpb.Worker_Config{{Key: "capacity", Value: string(rune('0' + capacity))}},
	}
	got, err := e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{Parent: "farm",
		BotSession: &rwpb.BotSession{BotId: id, Status: rwpb.BotStatus_OK, Worker: w}})
	if err != nil {
		e.t.Fatal(err)
	}
	return &bot{e: e, id: id, session: got.Name, worker: w, status: rwpb.BotStatus_OK}, got.Leases
}

// update reports leases and returns the reply's leases.
func (b *bot) update(leases ...*rwpb.Lease) []*rwpb.Lease {
	b.e.t.Helper()
	ctx, cancel := context.WithTimeout(b.e.ctx, time.Second)
	defer cancel()
	got, err := b.e.bots.UpdateBotSession(ctx, &rwpb.UpdateBotSessionRequest{Name: b.session,
		BotSession: &rwpb.BotSession{Name: b.session, BotId: b.id, Status: b.status, Worker: b.worker, Leases: leases}})
	if err != nil {
		b.e.t.Fatalf("UpdateBotSession: %v", err)
	}
	return got.Leases
}

// drainWith makes the bot report BOT_TERMINATING with a notice of kind and a deadline.
func (b *bot) drainWith(kind, reason string, deadline time.Time) {
	w := proto.Clone(b.worker).(*rwpb.Worker)
	w.Configs = append(w.Configs,
		&rwpb.Worker_Config{Key: scheduler.ConfigDrainDeadline, Value: deadline.Format(time.RFC3339)},
		&rwpb.Worker_Config{Key: scheduler.ConfigDrainKind, Value: kind},
		&rwpb.Worker_Config{Key: scheduler.ConfigDrainReason, Value: reason})
	b.worker, b.status = w, rwpb.BotStatus_BOT_TERMINATING
}

// actionOf returns the action digest of a lease's payload.
func actionOf(t *testing.T, l *rwpb.Lease) digest.Digest {
	t.Helper()
	var a repb.Action
	if err := l.Payload.UnmarshalTo(&a); err != nil {
		t.Fatal(err)
	}
	_, d, err := digest.FromMessage(&a)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func active(id string) *rwpb.Lease { return &rwpb.Lease{Id: id, State: rwpb.LeaseState_ACTIVE} }

// completed is a COMPLETED report of lease id with result, timed by the fake clock's start and now.
func (e *env) completed(id string, result *repb.ActionResult) *rwpb.Lease {
	e.t.Helper()
	now := e.clk.Now()
	result.ExecutionMetadata = &repb.ExecutedActionMetadata{
		InputFetchStartTimestamp:     timestamppb.New(now.Add(-9 * time.Second)),
		InputFetchCompletedTimestamp: timestamppb.New(now.Add(-8 * time.Second)),
		ExecutionStartTimestamp:      timestamppb.New(now.Add(-8 * time.Second)),
		ExecutionCompletedTimestamp:  timestamppb.New(now.Add(-time.Second)),
	}
	r, err := anypb.New(result)
	if err != nil {
		e.t.Fatal(err)
	}
	return &rwpb.Lease{Id: id, State: rwpb.LeaseState_COMPLETED, Result: r, Status: &spb.Status{}}
}

// get serves GET path from a loopback address (Host 127.0.0.1:9090 unless a "Host" pair says) with extra headers ("Name", "value" pairs).
func get(t *testing.T, h http.Handler, path string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = "127.0.0.1:40000"
	req.Host = "127.0.0.1:9090"
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Host" {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// page serves GET path and fails unless it answers 200; it returns the body.
func page(t *testing.T, h http.Handler, path string, headers ...string) string {
	t.Helper()
	rec := get(t, h, path, headers...)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", path, rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// contains fails the test unless body holds every one of wants.
func contains(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}
