package main

import (
	"strings"
	"testing"
)

// The start-up banner names the web console's URL (a wildcard address as 127.0.0.1), and
// leaves it out when the HTTP port is off.
func TestClientSettingsNameTheConsole(t *testing.T) {
	for _, c := range []struct{ addr, want string }{
		{"127.0.0.1:9090", "# Web console: http://127.0.0.1:9090/console/\n"},
		{"0.0.0.0:9191", "# Web console: http://127.0.0.1:9191/console/\n"},
		{"[::]:9292", "# Web console: http://127.0.0.1:9292/console/\n"},
	} {
		var b strings.Builder
		printClientSettings(&b, clientSettings{listen: "127.0.0.1:8980", console: c.addr})
		if !strings.Contains(b.String(), c.want) {
			t.Errorf("console %s: banner lacks %q:\n%s", c.addr, c.want, b.String())
		}
	}
	var b strings.Builder
	printClientSettings(&b, clientSettings{listen: "127.0.0.1:8980"})
	if strings.Contains(b.String(), "console") {
		t.Errorf("banner without a console names one:\n%s", b.String())
	}
}

// A replica's banner never tells clients to use the replica's own address: it prints the
// --public-address (the load balancer) when given, else a LOAD_BALANCER placeholder and a note.
func TestClientSettingsOfAReplicaNameTheLoadBalancer(t *testing.T) {
	var b strings.Builder
	printClientSettings(&b, clientSettings{listen: "0.0.0.0:8980", ha: true, public: "grpcs://lb.example:443"})
	out := b.String()
	if !strings.Contains(out, "build --remote_executor=grpcs://lb.example:443\n") || strings.Contains(out, "executor=grpcs://127.0.0.1") {
		t.Errorf("replica banner with --public-address:\n%s", out)
	}
	if !strings.Contains(out, "This is ONE replica") {
		t.Errorf("replica banner lacks the note:\n%s", out)
	}
	b.Reset()
	printClientSettings(&b, clientSettings{listen: "10.0.0.5:8980", ha: true})
	out = b.String()
	if !strings.Contains(out, "build --remote_executor=grpc://LOAD_BALANCER:8980\n") || !strings.Contains(out, "--public-address") {
		t.Errorf("replica banner without --public-address:\n%s", out)
	}
	if strings.Contains(out, "remote_execution_address = \"grpc://10.0.0.5") {
		t.Errorf("replica banner tells Pants to use the replica itself:\n%s", out)
	}
	b.Reset()
	printClientSettings(&b, clientSettings{listen: "127.0.0.1:8980", public: "build.example:8980"})
	if out := b.String(); !strings.Contains(out, "remote_store_address = \"grpc://build.example:8980\"") {
		t.Errorf("single-process banner with --public-address:\n%s", out)
	}
}

// The banner's Pants settings name the workers' append-only caches path: /toolchain/caches,
// what Pants and the workers default to, unless the scheduler is told another (make run keeps
// it under ./buildfleet-data).
func TestClientSettingsNameTheWorkersCachesPath(t *testing.T) {
	for caches, want := range map[string]string{
		"":                                    "remote_execution_append_only_caches_base_path = \"/toolchain/caches\"\n",
		"/home/me/src/buildfleet-data/caches": "remote_execution_append_only_caches_base_path = \"/home/me/src/buildfleet-data/caches\"\n",
	} {
		var b strings.Builder
		printClientSettings(&b, clientSettings{listen: "127.0.0.1:8980", caches: caches})
		if !strings.Contains(b.String(), want) {
			t.Errorf("caches %q: banner lacks %q:\n%s", caches, want, b.String())
		}
	}
}
