package e2e_test

import (
	"testing"
)

// TestBazelRemoteCache builds a workspace with Bazel 4.2.3 using the scheduler as its remote
// cache, cleans, builds again, and expects every action to be a remote cache hit with outputs
// identical to the first build.
func TestBazelRemoteCache(t *testing.T) {
	bazel := bazel4(t)
	s := startScheduler(t, "")
	w := newWorkspace(t, bazel, 50)
	flags := []string{"--remote_cache=grpc://" + s.addr, "--remote_instance_name=e2e/cache"}

	first := processCounts(t, w.build(flags...))
	if first["remote cache hit"] != 0 {
		t.Fatalf("first build had cache hits: %v", first)
	}
	want := w.outputs()

	w.clean()
	second := processCounts(t, w.build(flags...))
	if second["remote cache hit"] != w.rules {
		t.Fatalf("second build: %v, want %d remote cache hits", second, w.rules)
	}
	for kind, n := range second {
		if kind != "remote cache hit" && kind != "internal" && n > 0 {
			t.Fatalf("second build ran %d actions as %q; want only cache hits", n, kind)
		}
	}
	sameOutputs(t, want, w.outputs())

	// Another instance name shares nothing from the action cache.
	w.clean()
	other := processCounts(t, w.build("--remote_cache=grpc://"+s.addr, "--remote_instance_name=e2e/other"))
	if other["remote cache hit"] != 0 {
		t.Fatalf("instance e2e/other saw cache hits from e2e/cache: %v", other)
	}
}
