package main

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/internal/flagenv"
)

// The HTTP address a replica publishes for the others (to fetch /workers from the leader) is
// the advertise host with the --metrics-listen port, and none when the others cannot reach it.
func TestAdvertiseHTTP(t *testing.T) {
	for _, c := range []struct{ advertise, metrics, want string }{
		{"10.0.0.5:8980", "0.0.0.0:9090", "10.0.0.5:9090"},
		{"10.0.0.5:8980", ":9090", "10.0.0.5:9090"},
		{"127.0.0.1:8981", "127.0.0.1:9091", "127.0.0.1:9091"},
		{"10.0.0.5:8980", "127.0.0.1:9090", ""}, // loopback only: not reachable from the others
		{"10.0.0.5:8980", "", ""},               // HTTP off
		{"10.0.0.5:8980", "0.0.0.0:0", ""},      // port unknown in advance
	} {
		if got := advertiseHTTP(c.advertise, c.metrics); got != c.want {
			t.Errorf("advertiseHTTP(%q, %q) = %q, want %q", c.advertise, c.metrics, got, c.want)
		}
	}
}

// --adoption-window is 3 s for replicas by default; a single scheduler has none unless the flag
// or its environment variable is given.
func TestAdoptionWindowFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  string
		ha   bool
		want time.Duration
	}{
		{nil, "", true, 3 * time.Second},
		{nil, "", false, 0},
		{[]string{"--adoption-window=5s"}, "", false, 5 * time.Second},
		{nil, "4s", false, 4 * time.Second},
		{[]string{"--adoption-window=1s"}, "", true, time.Second},
	} {
		fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
		f := registerHAFlags(fs)
		env := func(k string) string {
			if k == "BUILDFLEET_ADOPTION_WINDOW" {
				return c.env
			}
			return ""
		}
		if err := flagenv.Parse(fs, "BUILDFLEET", c.args, env); err != nil {
			t.Fatal(err)
		}
		if got := f.adoptionWindowFor(c.ha); got != c.want {
			t.Errorf("args %v env %q ha %v: window %s, want %s", c.args, c.env, c.ha, got, c.want)
		}
	}
	fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	registerHAFlags(fs)
	if err := fs.Parse([]string{"--adoption-window=-1s"}); err == nil {
		t.Error("a negative --adoption-window was accepted")
	}
}

// An --advertise-address equal to --public-address (the load balancer's address, in any of the
// forms --public-address takes) is refused; another address, or no --public-address, is not.
func TestAdvertiseAddressMustNotBeThePublicOne(t *testing.T) {
	for _, c := range []struct {
		advertise, public string
		refused           bool
	}{
		{"lb.example:8980", "lb.example:8980", true},
		{"lb.example:8980", "grpc://LB.example:8980", true},
		{"lb.example:8980", "grpcs://lb.example:8980/", true},
		{"10.0.0.5:8980", "lb.example:8980", false},
		{"10.0.0.5:8980", "", false},
		{"lb.example:8981", "lb.example:8980", false},
	} {
		err := checkAdvertiseNotPublic(c.advertise, c.public)
		if (err != nil) != c.refused {
			t.Errorf("advertise %q public %q: %v, want refused %v", c.advertise, c.public, err, c.refused)
		}
		if err != nil && !strings.Contains(err.Error(), "--public-address") {
			t.Errorf("error %q does not name --public-address", err)
		}
	}
}
