package flagenv_test

import (
	"flag"
	"io"
	"reflect"
	"testing"

	"github.com/buildfleet/buildfleet/internal/flagenv"
)

func newSet() (*flag.FlagSet, *string, *int, *flagenv.Strings) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen := fs.String("listen", "127.0.0.1:8980", "")
	n := fs.Int("worker-concurrency", 2, "")
	var platform flagenv.Strings
	fs.Var(&platform, "platform", "")
	return fs, listen, n, &platform
}

func TestEnvironmentFillsUnsetFlags(t *testing.T) {
	fs, listen, n, platform := newSet()
	env := map[string]string{
		"BUILDFLEET_LISTEN":             "0.0.0.0:1",
		"BUILDFLEET_WORKER_CONCURRENCY": "8",
		"BUILDFLEET_PLATFORM":           "OSFamily=linux, pool=big",
	}
	if err := flagenv.Parse(fs, "BUILDFLEET", nil, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if *listen != "0.0.0.0:1" || *n != 8 || !reflect.DeepEqual([]string(*platform), []string{"OSFamily=linux", "pool=big"}) {
		t.Fatalf("got listen=%q n=%d platform=%v", *listen, *n, *platform)
	}
}

func TestCommandLineWinsOverEnvironment(t *testing.T) {
	fs, listen, n, _ := newSet()
	env := map[string]string{"BUILDFLEET_LISTEN": "0.0.0.0:1", "BUILDFLEET_WORKER_CONCURRENCY": "8"}
	if err := flagenv.Parse(fs, "BUILDFLEET", []string{"--listen=127.0.0.1:9"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if *listen != "127.0.0.1:9" || *n != 8 {
		t.Fatalf("got listen=%q n=%d", *listen, *n)
	}
}

func TestBadEnvironmentValueIsAnError(t *testing.T) {
	fs, _, _, _ := newSet()
	err := flagenv.Parse(fs, "BUILDFLEET", nil, func(k string) string {
		if k == "BUILDFLEET_WORKER_CONCURRENCY" {
			return "many"
		}
		return ""
	})
	if err == nil {
		t.Fatal("want an error for a non-numeric BUILDFLEET_WORKER_CONCURRENCY")
	}
}

// cliOnly is a boolean flag that, like --version, only the command line may set.
type cliOnly bool

func (c *cliOnly) IsBoolFlag() bool      { return true }
func (c *cliOnly) CommandLineOnly() bool { return true }
func (c *cliOnly) String() string        { return "" }
func (c *cliOnly) Set(string) error      { *c = true; return nil }

func TestCommandLineOnlyFlagIgnoresEnvironment(t *testing.T) {
	fs, _, _, _ := newSet()
	var v cliOnly
	fs.Var(&v, "version", "print the version")
	flagenv.AnnotateUsage(fs, "BUILDFLEET")
	if u := fs.Lookup("version").Usage; u != "print the version" {
		t.Errorf("usage %q names an environment variable", u)
	}
	if u := fs.Lookup("listen").Usage; u != " (env BUILDFLEET_LISTEN)" {
		t.Errorf("listen usage %q", u)
	}
	env := map[string]string{"BUILDFLEET_VERSION": "true"}
	if err := flagenv.Parse(fs, "BUILDFLEET", nil, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if v {
		t.Fatal("BUILDFLEET_VERSION set a command-line-only flag")
	}
	if err := flagenv.Parse(fs, "BUILDFLEET", []string{"--version"}, func(k string) string { return env[k] }); err != nil || !v {
		t.Fatalf("--version on the command line: err %v, set %v", err, v)
	}
}
