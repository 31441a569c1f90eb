package auth_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/buildfleet/buildfleet/auth"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// services implements every service the scheduler serves trivially, answering OK, and records
// the identity each call saw in its context.
type services struct {
	repb.UnimplementedCapabilitiesServer
	repb.UnimplementedContentAddressableStorageServer
	repb.UnimplementedActionCacheServer
	repb.UnimplementedExecutionServer
	bspb.UnimplementedByteStreamServer
	longrunningpb.UnimplementedOperationsServer
	rwpb.UnimplementedBotsServer

	mu    sync.Mutex
	calls int
	last  auth.Identity
	hasID bool
}

func (s *services) record(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	s.last, s.hasID = auth.FromContext(ctx)
}

// seen returns the number of calls that reached a handler and the identity of the last one.
func (s *services) seen() (int, auth.Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, s.last, s.hasID
}

func (s *services) GetCapabilities(ctx context.Context, _ *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	s.record(ctx)
	return &repb.ServerCapabilities{}, nil
}

func (s *services) FindMissingBlobs(ctx context.Context, _ *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	s.record(ctx)
	return &repb.FindMissingBlobsResponse{}, nil
}

func (s *services) BatchUpdateBlobs(ctx context.Context, _ *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	s.record(ctx)
	return &repb.BatchUpdateBlobsResponse{}, nil
}

func (s *services) GetActionResult(ctx context.Context, _ *repb.GetActionResultRequest) (*repb.ActionResult, error) {
	s.record(ctx)
	return &repb.ActionResult{}, nil
}

func (s *services) UpdateActionResult(ctx context.Context, req *repb.UpdateActionResultRequest) (*repb.ActionResult, error) {
	s.record(ctx)
	return req.GetActionResult(), nil
}

func (s *services) Execute(req *repb.ExecuteRequest, stream repb.Execution_ExecuteServer) error {
	s.record(stream.Context())
	return stream.Send(&longrunningpb.Operation{Name: req.GetInstanceName() + "/operations/1", Done: true})
}

func (s *services) WaitExecution(req *repb.WaitExecutionRequest, stream repb.Execution_WaitExecutionServer) error {
	s.record(stream.Context())
	return stream.Send(&longrunningpb.Operation{Name: req.GetName(), Done: true})
}

func (s *services) GetOperation(ctx context.Context, req *longrunningpb.GetOperationRequest) (*longrunningpb.Operation, error) {
	s.record(ctx)
	return &longrunningpb.Operation{Name: req.GetName(), Done: true}, nil
}

func (s *services) Read(req *bspb.ReadRequest, stream bspb.ByteStream_ReadServer) error {
	s.record(stream.Context())
	return stream.Send(&bspb.ReadResponse{Data: []byte("x")})
}

func (s *services) Write(stream bspb.ByteStream_WriteServer) error {
	var n int64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n += int64(len(req.GetData()))
	}
	s.record(stream.Context())
	return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: n})
}

func (s *services) CreateBotSession(ctx context.Context, req *rwpb.CreateBotSessionRequest) (*rwpb.BotSession, error) {
	s.record(ctx)
	return &rwpb.BotSession{Name: req.GetParent() + "/botSessions/1"}, nil
}

// startServer serves the services on 127.0.0.1 behind authz's interceptors and creds (plain
// TCP when nil), and returns its address.
func startServer(t *testing.T, authz *auth.Authorizer, creds credentials.TransportCredentials) (string, *services) {
	t.Helper()
	var opts []grpc.ServerOption
	if authz != nil {
		opts = append(opts, authz.ServerOptions()...)
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	srv := grpc.NewServer(opts...)
	s := &services{}
	repb.RegisterCapabilitiesServer(srv, s)
	repb.RegisterContentAddressableStorageServer(srv, s)
	repb.RegisterActionCacheServer(srv, s)
	repb.RegisterExecutionServer(srv, s)
	bspb.RegisterByteStreamServer(srv, s)
	longrunningpb.RegisterOperationsServer(srv, s)
	rwpb.RegisterBotsServer(srv, s)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), s
}

// dial connects to addr with creds, closing the connection when the test ends.
func dial(t *testing.T, addr string, creds credentials.TransportCredentials, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
