package auth_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/buildfleet/buildfleet/auth"
)

// benchAuthorizer returns an authorizer over n client tokens, each with two grants, and the
// last token.
func benchAuthorizer(b *testing.B, n int) (*auth.Authorizer, string) {
	b.Helper()
	var sb strings.Builder
	var last string
	for i := range n {
		last = fmt.Sprintf("bench-token-%032d", i)
		fmt.Fprintf(&sb, "%s team-%d/** read,write\n%s \"\" read\n", last, i, last)
	}
	file := filepath.Join(b.TempDir(), "clients")
	if err := writeBenchFile(file, sb.String()); err != nil {
		b.Fatal(err)
	}
	authz, err := auth.New(auth.Config{ClientTokensFile: file}, zerologNop())
	if err != nil {
		b.Fatal(err)
	}
	return authz, last
}

func BenchmarkAuthenticate(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			authz, token := benchAuthorizer(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := authz.Authenticate(token); !ok {
					b.Fatal("token refused")
				}
			}
		})
	}
}

func BenchmarkUnaryInterceptor(b *testing.B) {
	authz, token := benchAuthorizer(b, 10)
	interceptor := authz.UnaryServerInterceptor()
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
	req := &repb.GetActionResultRequest{InstanceName: "team-9/ci"}
	info := &grpc.UnaryServerInfo{FullMethod: "/build.bazel.remote.execution.v2.ActionCache/GetActionResult"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := interceptor(ctx, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}
