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
		printClientSettings(&b, "127.0.0.1:8980", false, false, c.addr)
		if !strings.Contains(b.String(), c.want) {
			t.Errorf("console %s: banner lacks %q:\n%s", c.addr, c.want, b.String())
		}
	}
	var b strings.Builder
	printClientSettings(&b, "127.0.0.1:8980", false, false, "")
	if strings.Contains(b.String(), "console") {
		t.Errorf("banner without a console names one:\n%s", b.String())
	}
}
