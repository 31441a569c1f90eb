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
