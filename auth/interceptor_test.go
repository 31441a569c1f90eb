package auth_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/auth"
	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

const (
	readToken   = "read-0123456789abcdef"
	rwToken     = "readwrite-0123456789abcdef"
	execToken   = "execute-0123456789abcdef"
	workerToken = "worker-0123456789abcdef"
	wrongToken  = "wrong-0123456789abcdef"
)

var allTokens = []string{readToken, rwToken, execToken, workerToken, wrongToken}

// writeTokenFiles writes the client and worker token files of the matrix and returns their paths.
func writeTokenFiles(t *testing.T) (clients, workers string) {
	t.Helper()
	dir := t.TempDir()
	clients = filepath.Join(dir, "clients")
	workers = filepath.Join(dir, "workers")
	writeFile(t, clients, []byte(`# grants of the matrix test
`+readToken+` team-a/** read
`+rwToken+`   team-a/** read,write   # CI
`+rwToken+`   ""        read
`+execToken+` team-a/** execute
`))
	writeFile(t, workers, []byte("# workers\n"+workerToken+"\n"))
	return clients, workers
}

// withToken returns ctx sending token as a bearer token ("" sends none).
func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

var blob = digest.FromBytes([]byte("x"))

// matrixCalls are the calls of the matrix, each made on one instance name.
var matrixCalls = []struct {
	name   string
	method string
	call   func(ctx context.Context, conn *grpc.ClientConn, instance string) error
}{
	{"GetActionResult", "/build.bazel.remote.execution.v2.ActionCache/GetActionResult", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		_, err := repb.NewActionCacheClient(conn).GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: instance, ActionDigest: blob.Proto()})
		return err
	}},
	{"UpdateActionResult", "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		_, err := repb.NewActionCacheClient(conn).UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: instance, ActionDigest: blob.Proto(), ActionResult: &repb.ActionResult{}})
		return err
	}},
	{"FindMissingBlobs", "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		_, err := repb.NewContentAddressableStorageClient(conn).FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: instance, BlobDigests: []*repb.Digest{blob.Proto()}})
		return err
	}},
	{"BatchUpdateBlobs", "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		_, err := repb.NewContentAddressableStorageClient(conn).BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{InstanceName: instance,
			Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: blob.Proto(), Data: []byte("x")}}})
		return err
	}},
	{"ByteStreamRead", "/google.bytestream.ByteStream/Read", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		stream, err := bspb.NewByteStreamClient(conn).Read(ctx, &bspb.ReadRequest{ResourceName: digest.ReadResourceName(instance, blob, digest.Identity)})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}},
	{"ByteStreamWrite", "/google.bytestream.ByteStream/Write", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		stream, err := bspb.NewByteStreamClient(conn).Write(ctx)
		if err != nil {
			return err
		}
		err = stream.Send(&bspb.WriteRequest{ResourceName: digest.WriteResourceName(instance, blob, digest.Identity), Data: []byte("x"), FinishWrite: true})
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err = stream.CloseAndRecv()
		return err
	}},
	{"Execute", "/build.bazel.remote.execution.v2.Execution/Execute", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		stream, err := repb.NewExecutionClient(conn).Execute(ctx, &repb.ExecuteRequest{InstanceName: instance, ActionDigest: blob.Proto()})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}},
	{"CreateBotSession", "/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession", func(ctx context.Context, conn *grpc.ClientConn, instance string) error {
		_, err := rwpb.NewBotsClient(conn).CreateBotSession(ctx, &rwpb.CreateBotSessionRequest{Parent: instance, BotSession: &rwpb.BotSession{BotId: "bot"}})
		return err
	}},
}

const (
	ok  = codes.OK
	pd  = codes.PermissionDenied
	un  = codes.Unauthenticated
	own = "team-a"
	oth = "team-b"
)

func TestAuthorizationMatrix(t *testing.T) {
	clients, workers := writeTokenFiles(t)
	logger, logs := newLogger()
	authz, err := auth.New(auth.Config{ClientTokensFile: clients, WorkerTokensFile: workers}, logger)
	if err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t, "ca")
	server := ca.Issue(t, "server", true)
	serverCreds, err := auth.ServerCredentials(server.CertFile, server.KeyFile, "", logger)
	if err != nil {
		t.Fatal(err)
	}
	addr, svc := startServer(t, authz, serverCreds)
	clientCreds, err := auth.ClientTransportCredentials(ca.File, "", "", "", logger)
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, addr, clientCreds)

	callers := []struct {
		name, token string
		kind        auth.Kind
	}{
		{"read", readToken, auth.Client},
		{"read+write", rwToken, auth.Client},
		{"execute", execToken, auth.Client},
		{"worker", workerToken, auth.Worker},
		{"anonymous", "", 0},
		{"wrong", wrongToken, 0},
	}
	// want[caller][call] holds the codes on the caller's own instance and on another one.
	want := map[string]map[string][2]codes.Code{
		"read": {
			"GetActionResult": {ok, pd}, "UpdateActionResult": {pd, pd}, "FindMissingBlobs": {ok, pd}, "BatchUpdateBlobs": {pd, pd},
			"ByteStreamRead": {ok, pd}, "ByteStreamWrite": {pd, pd}, "Execute": {pd, pd}, "CreateBotSession": {pd, pd},
		},
		"read+write": {
			"GetActionResult": {ok, pd}, "UpdateActionResult": {ok, pd}, "FindMissingBlobs": {ok, pd}, "BatchUpdateBlobs": {ok, pd},
			"ByteStreamRead": {ok, pd}, "ByteStreamWrite": {ok, pd}, "Execute": {pd, pd}, "CreateBotSession": {pd, pd},
		},
		"execute": {
			"GetActionResult": {pd, pd}, "UpdateActionResult": {pd, pd}, "FindMissingBlobs": {pd, pd}, "BatchUpdateBlobs": {ok, pd},
			"ByteStreamRead": {pd, pd}, "ByteStreamWrite": {ok, pd}, "Execute": {ok, pd}, "CreateBotSession": {pd, pd},
		},
		"worker": {
			"GetActionResult": {pd, pd}, "UpdateActionResult": {pd, pd}, "FindMissingBlobs": {ok, ok}, "BatchUpdateBlobs": {ok, ok},
			"ByteStreamRead": {ok, ok}, "ByteStreamWrite": {ok, ok}, "Execute": {pd, pd}, "CreateBotSession": {ok, ok},
		},
		"anonymous": {
			"GetActionResult": {un, un}, "UpdateActionResult": {un, un}, "FindMissingBlobs": {un, un}, "BatchUpdateBlobs": {un, un},
			"ByteStreamRead": {un, un}, "ByteStreamWrite": {un, un}, "Execute": {un, un}, "CreateBotSession": {un, un},
		},
		"wrong": {
			"GetActionResult": {un, un}, "UpdateActionResult": {un, un}, "FindMissingBlobs": {un, un}, "BatchUpdateBlobs": {un, un},
			"ByteStreamRead": {un, un}, "ByteStreamWrite": {un, un}, "Execute": {un, un}, "CreateBotSession": {un, un},
		},
	}

	for _, caller := range callers {
		for _, call := range matrixCalls {
			for i, instance := range []string{own, oth} {
				t.Run(caller.name+"/"+call.name+"/"+instance, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(withToken(context.Background(), caller.token), 10*time.Second)
					defer cancel()
					before, _, _ := svc.seen()
					err := call.call(ctx, conn, instance)
					st := status.Convert(err)
					expected := want[caller.name][call.name][i]
					if st.Code() != expected {
						t.Fatalf("got %v %q, want %v", st.Code(), st.Message(), expected)
					}
					after, id, hasID := svc.seen()
					if expected != codes.OK {
						if after != before {
							t.Errorf("a refused call reached the handler")
						}
						for _, tok := range allTokens {
							if strings.Contains(st.Message(), tok) {
								t.Errorf("error message %q holds a token", st.Message())
							}
						}
						if !strings.Contains(st.Message(), call.method) {
							t.Errorf("error message %q does not name the method %s", st.Message(), call.method)
						}
						if expected == codes.PermissionDenied && caller.kind == auth.Client && call.name != "CreateBotSession" &&
							!strings.Contains(st.Message(), `"`+instance+`"`) {
							t.Errorf("error message %q does not name the instance %q", st.Message(), instance)
						}
						return
					}
					if after != before+1 || !hasID || id.Kind != caller.kind || id.Name != auth.TokenID(caller.token) {
						t.Errorf("handler saw calls %d→%d identity %+v (%v), want one call by %v %s",
							before, after, id, hasID, caller.kind, auth.TokenID(caller.token))
					}
				})
			}
		}
	}
	for _, tok := range allTokens {
		if strings.Contains(logs.String(), tok) {
			t.Errorf("a token appears in the logs:\n%s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), auth.TokenID(wrongToken)) {
		t.Errorf("the logs do not name the unknown token by its id:\n%s", logs.String())
	}
}

// startPlain serves the matrix's token files over plain TCP and returns a connection to it.
func startPlain(t *testing.T) (*grpc.ClientConn, *services) {
	t.Helper()
	clients, workers := writeTokenFiles(t)
	logger, _ := newLogger()
	authz, err := auth.New(auth.Config{ClientTokensFile: clients, WorkerTokensFile: workers}, logger)
	if err != nil {
		t.Fatal(err)
	}
	addr, svc := startServer(t, authz, nil)
	return dial(t, addr, insecure.NewCredentials()), svc
}

func TestOperationsAndCapabilities(t *testing.T) {
	conn, _ := startPlain(t)
	waitExecution := func(ctx context.Context, name string) error {
		stream, err := repb.NewExecutionClient(conn).WaitExecution(ctx, &repb.WaitExecutionRequest{Name: name})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	getOperation := func(ctx context.Context, name string) error {
		_, err := longrunningpb.NewOperationsClient(conn).GetOperation(ctx, &longrunningpb.GetOperationRequest{Name: name})
		return err
	}
	getCapabilities := func(ctx context.Context, instance string) error {
		_, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: instance})
		return err
	}
	health := func(ctx context.Context, _ string) error {
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	for _, tc := range []struct {
		name  string
		token string
		call  func(context.Context, string) error
		arg   string
		want  codes.Code
	}{
		{"WaitExecution own instance", execToken, waitExecution, "team-a/operations/abc", ok},
		{"WaitExecution nested own instance", execToken, waitExecution, "team-a/ci/operations/abc", ok},
		{"WaitExecution other instance", execToken, waitExecution, "team-b/operations/abc", pd},
		{"WaitExecution name without instance", execToken, waitExecution, "abc", pd},
		{"WaitExecution by a reader", readToken, waitExecution, "team-a/operations/abc", pd},
		{"WaitExecution by a worker", workerToken, waitExecution, "team-a/operations/abc", pd},
		{"WaitExecution escaping name", execToken, waitExecution, "team-a/../team-b/operations/abc", codes.InvalidArgument},
		{"GetOperation own instance", execToken, getOperation, "team-a/operations/abc", ok},
		{"GetOperation other instance", execToken, getOperation, "team-b/operations/abc", pd},
		{"GetCapabilities by a reader on another instance", readToken, getCapabilities, "team-b", ok},
		{"GetCapabilities by a worker", workerToken, getCapabilities, "", ok},
		{"GetCapabilities anonymous", "", getCapabilities, "", un},
		{"GetCapabilities wrong token", wrongToken, getCapabilities, "", un},
		{"health check anonymous", "", health, "", ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(withToken(context.Background(), tc.token), 10*time.Second)
			defer cancel()
			if err := tc.call(ctx, tc.arg); status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestEmptyInstanceGrant(t *testing.T) {
	conn, _ := startPlain(t)
	ac := repb.NewActionCacheClient(conn)
	ctx := withToken(context.Background(), rwToken)
	// rwToken reads "" but writes only team-a/**.
	if _, err := ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: blob.Proto()}); err != nil {
		t.Errorf("GetActionResult on the empty instance: %v", err)
	}
	_, err := ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: blob.Proto(), ActionResult: &repb.ActionResult{}})
	want := status.New(codes.PermissionDenied, `Permission denied: client `+auth.TokenID(rwToken)+
		` may not call /build.bazel.remote.execution.v2.ActionCache/UpdateActionResult on instance "" (needs write)`)
	if got := status.Convert(err); got.Code() != want.Code() || got.Message() != want.Message() {
		t.Errorf("UpdateActionResult on the empty instance: got %v, want %v", got, want)
	}
	// Instance names that try to leave their tenant's namespace are refused before any grant matches.
	_, err = ac.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "team-a/..", ActionDigest: blob.Proto()})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetActionResult on team-a/..: got %v, want INVALID_ARGUMENT", err)
	}
}

func TestAuthorizationHeaderForms(t *testing.T) {
	conn, _ := startPlain(t)
	cas := repb.NewContentAddressableStorageClient(conn)
	for _, tc := range []struct {
		header []string
		want   codes.Code
	}{
		{[]string{"Bearer " + readToken}, ok},
		{[]string{"bearer " + readToken}, ok},
		{[]string{"BEARER   " + readToken + "  "}, ok},
		{[]string{"Basic " + readToken}, un},
		{[]string{readToken}, un},
		{[]string{"Bearer "}, un},
		{[]string{"Bearer " + readToken, "Bearer " + rwToken}, un},
		{[]string{"Bearer " + readToken, "Bearer " + readToken}, ok},
	} {
		md := metadata.MD{}
		for _, h := range tc.header {
			md.Append("authorization", h)
		}
		ctx := metadata.NewOutgoingContext(context.Background(), md)
		_, err := cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: own})
		if status.Code(err) != tc.want {
			t.Errorf("header %q: got %v, want %v", tc.header, err, tc.want)
		}
		if strings.Contains(status.Convert(err).Message(), readToken) {
			t.Errorf("header %q: error %q holds the token", tc.header, status.Convert(err).Message())
		}
	}
}

func TestByteStreamWriteWithoutResourceName(t *testing.T) {
	conn, svc := startPlain(t)
	stream, err := bspb.NewByteStreamClient(conn).Write(withToken(context.Background(), rwToken))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{Data: []byte("x"), FinishWrite: true}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	_, err = stream.CloseAndRecv()
	want := status.New(codes.InvalidArgument, "The first request of an upload must name its resource")
	if got := status.Convert(err); got.Code() != want.Code() || got.Message() != want.Message() {
		t.Errorf("got %v, want %v", got, want)
	}
	if n, _, _ := svc.seen(); n != 0 {
		t.Errorf("the write reached the handler")
	}
}

func TestAuthenticationOff(t *testing.T) {
	logger, logs := newLogger()
	authz, err := auth.New(auth.Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	if authz.Enabled() {
		t.Fatal("Enabled() = true without token files")
	}
	if !strings.Contains(logs.String(), "authentication is OFF") {
		t.Errorf("no warning that authentication is off in the logs:\n%s", logs.String())
	}
	addr, svc := startServer(t, authz, nil)
	conn := dial(t, addr, insecure.NewCredentials())
	for _, call := range matrixCalls {
		if err := call.call(context.Background(), conn, oth); err != nil {
			t.Errorf("%s without a token, authentication off: %v", call.name, err)
		}
	}
	if n, _, hasID := svc.seen(); n != len(matrixCalls) || hasID {
		t.Errorf("handlers saw %d calls (identity %v), want %d without identity", n, hasID, len(matrixCalls))
	}
	if !authz.MayWriteActionCache(context.Background(), oth) {
		t.Error("MayWriteActionCache refused with authentication off")
	}
}

func TestMayWriteActionCache(t *testing.T) {
	clients, workers := writeTokenFiles(t)
	authz, err := auth.New(auth.Config{ClientTokensFile: clients, WorkerTokensFile: workers}, zerologNop())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token    string
		instance string
		want     bool
	}{
		{rwToken, "team-a", true},
		{rwToken, "team-a/ci", true},
		{rwToken, "team-b", false},
		{rwToken, "", false},
		{readToken, "team-a", false},
		{execToken, "team-a", false},
		{workerToken, "team-a", false},
	} {
		id, ok := authz.Authenticate(tc.token)
		if !ok {
			t.Fatalf("Authenticate(%s) failed", auth.TokenID(tc.token))
		}
		if got := authz.MayWriteActionCache(auth.NewContext(context.Background(), id), tc.instance); got != tc.want {
			t.Errorf("MayWriteActionCache(%s, %q) = %v, want %v", id.Name, tc.instance, got, tc.want)
		}
	}
	if authz.MayWriteActionCache(context.Background(), "team-a") {
		t.Error("MayWriteActionCache allowed a context without identity")
	}
	if _, ok := authz.Authenticate(wrongToken); ok {
		t.Error("Authenticate accepted an unknown token")
	}
}

func TestLookupUsesConstantTimeComparison(t *testing.T) {
	src, err := os.ReadFile("authorizer.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "subtle.ConstantTimeCompare") {
		t.Error("authorizer.go no longer compares tokens with crypto/subtle")
	}
}
