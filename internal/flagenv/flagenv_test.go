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
