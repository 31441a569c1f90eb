package logformat_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/buildfleet/buildfleet/internal/logformat"
)

// logLine writes one message through a logger in format to w and returns what was written.
func logLine(t *testing.T, format string, buf *bytes.Buffer) string {
	t.Helper()
	w, err := logformat.Writer(buf, format)
	if err != nil {
		t.Fatal(err)
	}
	l := zerolog.New(w)
	l.Info().Str("action_digest", "abc/3").Msg("Action queued")
	return buf.String()
}

func TestFormats(t *testing.T) {
	var j bytes.Buffer
	var m map[string]any
	if err := json.Unmarshal([]byte(logLine(t, "json", &j)), &m); err != nil || m["message"] != "Action queued" {
		t.Fatalf("json format wrote %q (%v)", j.String(), err)
	}
	var c bytes.Buffer
	if line := logLine(t, "console", &c); strings.HasPrefix(line, "{") || !strings.Contains(line, "Action queued") || !strings.Contains(line, "action_digest=abc/3") {
		t.Fatalf("console format wrote %q", line)
	}
	// auto on something that is not a terminal (a buffer, a pipe, a file): JSON.
	var a bytes.Buffer
	if line := logLine(t, "auto", &a); !strings.HasPrefix(line, "{") {
		t.Fatalf("auto on a buffer wrote %q, want JSON", line)
	}
	if _, err := logformat.Writer(&a, "xml"); err == nil || !strings.Contains(err.Error(), "auto, console or json") {
		t.Fatalf("unknown format: %v", err)
	}
}

// auto is console on a terminal: a pseudo-terminal's follower side stands in for stderr at a
// terminal, a pipe for stderr redirected.
func TestAutoFollowsTheTerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile("/dev/pts/"+itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	if !logformat.IsTerminal(tty) {
		t.Fatal("a pseudo-terminal is not seen as a terminal")
	}
	w, err := logformat.Writer(tty, "auto")
	if _, ok := w.(zerolog.ConsoleWriter); err != nil || !ok {
		t.Fatalf("auto on a terminal gave %T, %v; want a console writer", w, err)
	}
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	if w, _ := logformat.Writer(pw, "auto"); w != pw {
		t.Fatalf("auto on a pipe gave %T, want the pipe itself (JSON)", w)
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
