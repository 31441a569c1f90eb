package version_test

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/buildfleet/buildfleet/internal/flagenv"
	"github.com/buildfleet/buildfleet/internal/version"
)

func TestVersionFlag(t *testing.T) {
	env := func(k string) string { return map[string]string{"BUILDFLEET_VERSION": "true"}[k] }
	for _, tc := range []struct {
		args  []string
		print bool
	}{{nil, false}, {[]string{"--version"}, true}, {[]string{"-version=false"}, false}} {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := version.Register(fs)
		if err := flagenv.Parse(fs, "BUILDFLEET", tc.args, env); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if got := f.Print(&out, "worker"); got != tc.print {
			t.Fatalf("%v: Print = %v, want %v (BUILDFLEET_VERSION must not count)", tc.args, got, tc.print)
		}
		want := ""
		if tc.print {
			want = version.Get().String("worker") + "\n"
		}
		if out.String() != want || (tc.print && !strings.HasPrefix(want, "worker ")) {
			t.Fatalf("%v: printed %q, want %q", tc.args, out.String(), want)
		}
	}
}
