package main

import "testing"

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
