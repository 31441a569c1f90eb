package auth_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/auth"
)

func TestFileTokenCredentials(t *testing.T) {
	clients, workers := writeTokenFiles(t)
	const second = "worker-2-0123456789abcdef"
	writeFile(t, workers, []byte(workerToken+"\n"+second+"\n"))
	authz, err := auth.New(auth.Config{ClientTokensFile: clients, WorkerTokensFile: workers}, zerologNop())
	if err != nil {
		t.Fatal(err)
	}
	addr, svc := startServer(t, authz, nil)

	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, []byte("\n  "+workerToken+"\n"))
	logger, logs := newLogger()
	creds, err := auth.LoadTokenCredentials(tokenFile, "", logger)
	if err != nil {
		t.Fatal(err)
	}
	if creds.ID != auth.TokenID(workerToken) || creds.RequireTransportSecurity() {
		t.Errorf("credentials ID %s, RequireTransportSecurity %v", creds.ID, creds.RequireTransportSecurity())
	}
	conn := dial(t, addr, insecure.NewCredentials(), grpc.WithPerRPCCredentials(creds))
	cas := repb.NewContentAddressableStorageClient(conn)
	callAs := func(want string) {
		t.Helper()
		if _, err := cas.FindMissingBlobs(context.Background(), &repb.FindMissingBlobsRequest{InstanceName: "team-b"}); err != nil {
			t.Fatalf("FindMissingBlobs: %v", err)
		}
		if _, id, _ := svc.seen(); id.Kind != auth.Worker || id.Name != auth.TokenID(want) {
			t.Errorf("server saw %+v, want worker %s", id, auth.TokenID(want))
		}
	}
	callAs(workerToken)

	// A rotated token is picked up on the next call.
	writeFile(t, tokenFile, []byte(second+"\n"))
	callAs(second)

	// An emptied file keeps the previous token.
	writeFile(t, tokenFile, []byte("  \n"))
	callAs(second)
	if !strings.Contains(logs.String(), "empty token") {
		t.Errorf("the empty token file is not logged:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), second) || strings.Contains(logs.String(), workerToken) {
		t.Errorf("a token appears in the logs:\n%s", logs.String())
	}
}

func TestEnvTokenCredentials(t *testing.T) {
	t.Setenv("BUILDFLEET_TEST_TOKEN", " "+execToken+"\n")
	creds, err := auth.LoadTokenCredentials("", "BUILDFLEET_TEST_TOKEN", zerologNop())
	if err != nil {
		t.Fatal(err)
	}
	md, err := creds.GetRequestMetadata(context.Background())
	if err != nil || md["authorization"] != "Bearer "+execToken {
		t.Errorf("metadata %v, %v", md, err)
	}
}

func TestLoadTokenCredentialsErrors(t *testing.T) {
	if c, err := auth.LoadTokenCredentials("", "", zerologNop()); c != nil || err != nil {
		t.Errorf("no token configured: %v, %v; want nil, nil", c, err)
	}
	if _, err := auth.LoadTokenCredentials("f", "V", zerologNop()); err == nil {
		t.Error("both a file and a variable: no error")
	}
	t.Setenv("BUILDFLEET_TEST_EMPTY", "")
	if _, err := auth.LoadTokenCredentials("", "BUILDFLEET_TEST_EMPTY", zerologNop()); err == nil ||
		err.Error() != "auth token environment variable BUILDFLEET_TEST_EMPTY: empty token" {
		t.Errorf("empty variable: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "token")
	writeFile(t, bad, []byte("two words-0123456789"))
	_, err := auth.LoadTokenCredentials(bad, "", zerologNop())
	if err == nil || strings.Contains(err.Error(), "words-0123456789") {
		t.Errorf("token with a space: %v", err)
	}
	if _, err := auth.LoadTokenCredentials(bad+".missing", "", zerologNop()); err == nil {
		t.Error("missing token file: no error")
	}
}

func TestClientTokenCannotOpenBotSessionWithCredentials(t *testing.T) {
	// The credentials are sent on every RPC; the server's matrix decides.
	conn, _ := startPlain(t)
	t.Setenv("BUILDFLEET_TEST_TOKEN", rwToken)
	creds, err := auth.NewEnvTokenCredentials("BUILDFLEET_TEST_TOKEN")
	if err != nil {
		t.Fatal(err)
	}
	md, _ := creds.GetRequestMetadata(context.Background())
	ctx := withToken(context.Background(), strings.TrimPrefix(md["authorization"], "Bearer "))
	err = matrixCalls[len(matrixCalls)-1].call(ctx, conn, "team-a")
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("CreateBotSession with a client token: %v", err)
	}
}
