package bootstrap

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// SystemdUnit describes the worker's systemd service and its environment file.
type SystemdUnit struct {
	// ExecPath is the installed worker binary.
	ExecPath string
	// Args are extra worker arguments, appended to ExecStart.
	Args []string
	// User runs the worker; empty or "root" runs it as root.
	User string
	// EnvironmentFile is the path of the file rendered by Environment.
	EnvironmentFile string
	// DrainTimeout is the worker's drain timeout; TimeoutStopSec exceeds it by StopTimeoutMargin.
	DrainTimeout time.Duration
	// Settings are the worker's BUILDFLEET_* variables, written to the environment file.
	Settings map[string]string
}

// StopTimeout is how long systemd waits after SIGTERM before SIGKILL.
func (u SystemdUnit) StopTimeout() time.Duration { return u.DrainTimeout + StopTimeoutMargin }

func (u SystemdUnit) nonRoot() bool { return u.User != "" && u.User != "root" }

// Render returns the unit file.
func (u SystemdUnit) Render() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Written by buildfleet bootstrap; running bootstrap again rewrites it.")
	w("[Unit]")
	w("Description=buildfleet remote execution worker")
	w("Documentation=https://github.com/buildfleet/buildfleet")
	w("Wants=network-online.target")
	w("After=network-online.target")
	w("")
	w("[Service]")
	w("Type=simple")
	if u.nonRoot() {
		w("User=%s", u.User)
		w("Group=%s", u.User)
	}
	w("EnvironmentFile=%s", u.EnvironmentFile)
	exec := []string{systemdQuote(u.ExecPath)}
	for _, a := range u.Args {
		exec = append(exec, systemdQuote(a))
	}
	w("ExecStart=%s", strings.Join(exec, " "))
	w("# A worker that crashes is restarted; one that drained and exited cleanly is not.")
	w("Restart=on-failure")
	w("RestartSec=5s")
	w("# SIGTERM starts the drain: no new leases, running actions finish or are handed back.")
	w("KillSignal=SIGTERM")
	w("# Only the worker gets SIGTERM, so the actions it is draining keep running; whatever is")
	w("# left when TimeoutStopSec runs out gets SIGKILL.")
	w("KillMode=mixed")
	w("# Drain timeout (%s) plus %s to report results and exit.", u.DrainTimeout, StopTimeoutMargin)
	w("TimeoutStopSec=%d", int(u.StopTimeout().Seconds()))
	w("LimitNOFILE=1048576")
	if u.nonRoot() {
		w("# Actions run as %s: they cannot gain privileges or write to /usr, /boot or /etc.", u.User)
		w("NoNewPrivileges=yes")
		w("ProtectSystem=full")
	}
	w("")
	w("[Install]")
	w("WantedBy=multi-user.target")
	return b.String()
}

// Environment returns the environment file: one NAME=VALUE line per setting, sorted, values
// double-quoted when they hold anything but plain characters.
func (u SystemdUnit) Environment() string {
	keys := make([]string, 0, len(u.Settings))
	for k := range u.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by buildfleet bootstrap: the worker's settings (see `worker --help`).\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, envQuote(u.Settings[k]))
	}
	return b.String()
}

// systemdQuote quotes one ExecStart word: specifiers (%) and variable expansion ($) are
// escaped, and words with spaces or quotes are double-quoted.
func systemdQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	s = strings.ReplaceAll(s, "$", "$$")
	if s != "" && !strings.ContainsAny(s, " \t\"'\\;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

func envQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\$`#") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", `\$`, "`", "\\`")
	return `"` + r.Replace(s) + `"`
}
