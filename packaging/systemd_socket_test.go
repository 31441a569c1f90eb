package packaging_test

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/buildfleet/buildfleet/auth"
)

// readUnit parses a systemd unit file into section → name → values.
func readUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]map[string][]string{}
	for _, o := range opts {
		if out[o.Section] == nil {
			out[o.Section] = map[string][]string{}
		}
		out[o.Section][o.Name] = append(out[o.Section][o.Name], o.Value)
	}
	return out
}

// The scheduler's socket unit holds one TCP socket on loopback (the scheduler refuses a
// non-loopback address without token files) and starts the service unit, which requires it;
// restarting the service leaves the socket to systemd.
func TestSchedulerSystemdUnitsPassTheSocket(t *testing.T) {
	sock := readUnit(t, "systemd/buildfleet-scheduler.socket")
	svc := readUnit(t, "systemd/buildfleet-scheduler.service")
	listen := sock["Socket"]["ListenStream"]
	if len(listen) != 1 {
		t.Fatalf("ListenStream = %v, want exactly one socket (the scheduler takes one)", listen)
	}
	if _, _, err := net.SplitHostPort(listen[0]); err != nil || !auth.IsLoopbackListen(listen[0]) {
		t.Errorf("ListenStream %q: want a loopback host:port by default", listen[0])
	}
	if got := sock["Socket"]["Service"]; len(got) != 1 || got[0] != "buildfleet-scheduler.service" {
		t.Errorf("socket starts %v, want buildfleet-scheduler.service", got)
	}
	if got := svc["Unit"]["After"]; len(got) != 1 || !strings.Contains(got[0], "buildfleet-scheduler.socket") {
		t.Errorf("service After=%v, want after the socket", got)
	}
	if got := svc["Unit"]["Requires"]; len(got) != 1 || got[0] != "buildfleet-scheduler.socket" {
		t.Errorf("service Requires=%v, want the socket", got)
	}
	if got := svc["Service"]["KillSignal"]; len(got) != 1 || got[0] != "SIGTERM" {
		t.Errorf("KillSignal=%v, want SIGTERM (graceful shutdown)", got)
	}
	if len(svc["Service"]["ExecStart"]) != 1 {
		t.Errorf("ExecStart=%v", svc["Service"]["ExecStart"])
	}
}

// The example scheduler.env does not set BUILDFLEET_LISTEN, which the socket-activated packaged
// service ignores, and tells where the address is changed instead.
func TestSchedulerEnvPointsAtTheSocketUnit(t *testing.T) {
	b, err := os.ReadFile("config/scheduler.env")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v := strings.TrimLeft(line, "# "); strings.HasPrefix(v, "BUILDFLEET_LISTEN=") {
			t.Errorf("scheduler.env has %q, which the packaged (socket-activated) service ignores", line)
		}
	}
	if !strings.Contains(string(b), "systemctl edit buildfleet-scheduler.socket") {
		t.Errorf("scheduler.env does not say how to change the gRPC address:\n%s", b)
	}
}
