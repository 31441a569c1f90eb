package bootstrap_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/bootstrap"
)

var errNotInstalled = errors.New("exit status 1")

func TestUnitQuoting(t *testing.T) {
	u := bootstrap.SystemdUnit{
		ExecPath: "/opt/build fleet/worker", Args: []string{"--platform", "pool=a b", "100%", "$HOME", `x"y`},
		EnvironmentFile: "/etc/w.env", DrainTimeout: time.Minute,
		Settings: map[string]string{"BUILDFLEET_B": "plain", "BUILDFLEET_A": `has "quotes" and $dollar`},
	}
	unit := u.Render()
	want := `ExecStart="/opt/build fleet/worker" --platform "pool=a b" 100%% $$HOME "x\"y"`
	if !hasLine(unit, want) {
		t.Fatalf("unit lacks %s:\n%s", want, unit)
	}
	if !hasLine(unit, "TimeoutStopSec=90") {
		t.Fatalf("TimeoutStopSec should be drain 60s + 30s:\n%s", unit)
	}
	env := u.Environment()
	lines := strings.Split(strings.TrimSpace(env), "\n")
	if lines[1] != `BUILDFLEET_A="has \"quotes\" and \$dollar"` || lines[2] != "BUILDFLEET_B=plain" {
		t.Fatalf("environment file:\n%s", env)
	}
}
