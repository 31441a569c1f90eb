// Package logformat builds the zerolog loggers of buildfleet's commands in the format their
// --log-format flag asks for: "console" (human-readable lines, for a person at a terminal),
// "json" (one JSON object a line, for log collectors), or "auto", console when the output is a
// terminal and JSON otherwise.
package logformat

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// The values of --log-format.
const (
	Auto    = "auto"
	Console = "console"
	JSON    = "json"
)

// Usage is the help text of a --log-format flag.
const Usage = "log format: auto (console when stderr is a terminal, else json), console or json"

// Check returns an error naming the accepted values unless format is one of them.
func Check(format string) error {
	switch format {
	case Auto, Console, JSON:
		return nil
	}
	return fmt.Errorf("--log-format=%q: want auto, console or json", format)
}

// Writer returns what a logger in format should write to w: w itself for JSON, a zerolog
// ConsoleWriter for console; auto picks console when w is a terminal. An unknown format is an
// error (see Check).
func Writer(w io.Writer, format string) (io.Writer, error) {
	if err := Check(format); err != nil {
		return nil, err
	}
	if format == JSON || (format == Auto && !IsTerminal(w)) {
		return w, nil
	}
	return zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !IsTerminal(w)}, nil
}

// IsTerminal reports whether w is a file open on a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
