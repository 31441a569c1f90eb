package auth_test

import (
	"testing"

	"github.com/buildfleet/buildfleet/auth"
)

func TestIsLoopbackListen(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8980":   true,
		"127.1.2.3:8980":   true,
		"[::1]:8980":       true,
		"localhost:8980":   true,
		"LOCALHOST:0":      true,
		":8980":            false,
		"0.0.0.0:8980":     false,
		"[::]:8980":        false,
		"10.0.0.5:8980":    false,
		"example.com:8980": false,
		"127.0.0.1":        false,
		"":                 false,
	} {
		if got := auth.IsLoopbackListen(addr); got != want {
			t.Errorf("IsLoopbackListen(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for _, tc := range []struct {
		host, listen string
		want         bool
	}{
		{"127.0.0.1:9090", "127.0.0.1:9090", true},
		{"localhost", "127.0.0.1:9090", true},
		{"LOCALHOST.:9090", "127.0.0.1:9090", true},
		{"127.3.2.1", "127.0.0.1:9090", true},
		{"[::1]:9090", "127.0.0.1:9090", true},
		{"console.internal:9090", "console.internal:9090", true},
		{"evil.example", "127.0.0.1:9090", false},
		{"127.0.0.1.nip.io", "127.0.0.1:9090", false},
		{"0.0.0.0:9090", "0.0.0.0:9090", false},
		{"2130706433", "127.0.0.1:9090", false},
		{"0x7f.0.0.1", "127.0.0.1:9090", false},
		{"", "127.0.0.1:9090", false},
	} {
		if got := auth.IsLoopbackHost(tc.host, tc.listen); got != tc.want {
			t.Errorf("IsLoopbackHost(%q, %q) = %v, want %v", tc.host, tc.listen, got, tc.want)
		}
	}
}
