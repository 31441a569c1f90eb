package worker_test

import (
	"runtime"
	"testing"

	"github.com/buildfleet/buildfleet/worker"
)

func TestParseProperty(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want worker.Property
		ok   bool
	}{
		{"OSFamily=linux", worker.Property{Key: "OSFamily", Value: "linux"}, true},
		{"container-image=docker://x@sha256:ab=", worker.Property{Key: "container-image", Value: "docker://x@sha256:ab="}, true},
		{" pool = big ", worker.Property{Key: "pool", Value: "big"}, true},
		{"empty=", worker.Property{Key: "empty"}, true},
		{"novalue", worker.Property{}, false},
		{"=v", worker.Property{}, false},
		{"", worker.Property{}, false},
	} {
		got, err := worker.ParseProperty(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseProperty(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestISA(t *testing.T) {
	for in, want := range map[string]string{"amd64": "x86-64", "arm64": "aarch64", "386": "x86-32", "riscv64": "riscv64"} {
		if got := worker.ISA(in); got != want {
			t.Errorf("ISA(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCompletePlatform(t *testing.T) {
	isa := worker.Property{Key: "ISA", Value: worker.ISA(runtime.GOARCH)}
	os := worker.Property{Key: "OSFamily", Value: runtime.GOOS}
	for _, tc := range []struct {
		name string
		in   []worker.Property
		want []worker.Property
	}{
		{"defaults", nil, []worker.Property{isa, os}},
		{"extra sorted in", []worker.Property{{"pool", "b"}, {"pool", "a"}}, []worker.Property{isa, os, {"pool", "a"}, {"pool", "b"}}},
		{"given OSFamily kept", []worker.Property{{"OSFamily", "Linux"}}, []worker.Property{isa, {"OSFamily", "Linux"}}},
		{"duplicates dropped", []worker.Property{{"k", "v"}, {"k", "v"}, {"ISA", "x"}}, []worker.Property{{"ISA", "x"}, os, {"k", "v"}}},
	} {
		got := worker.CompletePlatform(tc.in)
		if len(got) != len(tc.want) {
			t.Errorf("%s: CompletePlatform(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: CompletePlatform(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
				break
			}
		}
	}
}

func TestParseSchedulerAddress(t *testing.T) {
	for _, tc := range []struct {
		in     string
		addr   string
		secure bool
		ok     bool
	}{
		{"grpc://127.0.0.1:8980", "127.0.0.1:8980", false, true},
		{"grpcs://scheduler.example.com:443", "scheduler.example.com:443", true, true},
		{"grpc://[::1]:8980", "[::1]:8980", false, true},
		{"localhost:8980", "localhost:8980", false, true},
		{"http://h:1", "", false, false},
		{"grpc://h", "", false, false},
		{"grpc://h:1/path", "", false, false},
		{"", "", false, false},
	} {
		addr, secure, err := worker.ParseSchedulerAddress(tc.in)
		if (err == nil) != tc.ok || addr != tc.addr || secure != tc.secure {
			t.Errorf("ParseSchedulerAddress(%q) = %q, %v, %v; want %q, %v, ok=%v", tc.in, addr, secure, err, tc.addr, tc.secure, tc.ok)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, cfg := range []worker.Config{{}, {WorkerID: "w", Concurrency: -1}, {WorkerID: "w", DrainSafetyMargin: -1}} {
		if _, err := worker.New(cfg, nil, nil, nil, discardLogger); err == nil {
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
	if _, err := worker.Dial("grpc://127.0.0.1:1", "/nonexistent/ca.pem"); err == nil {
		t.Error("Dial with a CA certificate for a plaintext address succeeded")
	}
	if _, err := worker.Dial("grpcs://127.0.0.1:1", "/nonexistent/ca.pem"); err == nil {
		t.Error("Dial with an unreadable CA certificate succeeded")
	}
}
