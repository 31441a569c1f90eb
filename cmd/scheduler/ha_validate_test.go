package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestLoopbackAdvertiseWarning(t *testing.T) {
	for _, tc := range []struct {
		advertise string
		endpoints []string
		warn      bool
	}{
		// hostname -i on Debian: every replica would advertise itself as 127.0.1.1.
		{"127.0.1.1:8980", []string{"http://10.0.0.5:2379"}, true},
		{"127.0.0.1:8980", []string{"http://buildfleet-etcd:2379"}, true},
		{"localhost:8980", []string{"etcd.example.internal:2379"}, true},
		{"[::1]:8980", []string{"http://127.0.0.1:2379", "https://[2001:db8::1]:2379"}, true},
		{"127.0.0.1:8980", []string{"10.0.0.5"}, true},
		// Everything on one machine (the README's local recipe, the tests): fine.
		{"127.0.0.1:8980", []string{"http://127.0.0.1:2379"}, false},
		{"127.0.0.1:8980", []string{"localhost:2379", "http://[::1]:2379"}, false},
		// A routable advertise address is never warned about.
		{"10.0.0.7:8980", []string{"http://10.0.0.5:2379"}, false},
		{"10.0.0.7:8980", []string{"http://127.0.0.1:2379"}, false},
		{"scheduler-1.example:8980", []string{"http://etcd:2379"}, false},
		// Malformed advertise addresses are cluster.Config.Validate's business.
		{"127.0.0.1", []string{"http://10.0.0.5:2379"}, false},
	} {
		got := loopbackAdvertiseWarning(tc.advertise, tc.endpoints)
		if (got != "") != tc.warn {
			t.Errorf("advertise %s, endpoints %v: warning %q, want warning=%v", tc.advertise, tc.endpoints, got, tc.warn)
		}
		if tc.warn && !strings.Contains(got, tc.advertise) {
			t.Errorf("warning %q does not name %s", got, tc.advertise)
		}
	}
}

func TestWarnLoopbackAdvertiseLogs(t *testing.T) {
	var buf bytes.Buffer
	logger := zerolog.New(&buf)
	warnLoopbackAdvertise("127.0.0.1:8980", []string{"http://127.0.0.1:2379"}, logger)
	if buf.Len() != 0 {
		t.Fatalf("all-loopback setup logged %s", buf.String())
	}
	warnLoopbackAdvertise("127.0.1.1:8980", []string{"http://10.0.0.5:2379"}, logger)
	out := buf.String()
	if !strings.Contains(out, `"level":"warn"`) || !strings.Contains(out, "127.0.1.1:8980") || !strings.Contains(out, "loopback") {
		t.Errorf("log %q: want a warn naming the loopback advertise address", out)
	}
}
