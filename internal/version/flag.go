package version

import (
	"flag"
	"fmt"
	"io"
	"strconv"
)

// Flag is the --version flag: a boolean that only the command line sets. It is not read from
// the environment (internal/flagenv skips it), so that a BUILDFLEET_VERSION variable meant for
// something else never turns a worker into a program that prints its version and exits.
type Flag bool

// IsBoolFlag lets --version be given without a value.
func (f *Flag) IsBoolFlag() bool { return true }

// CommandLineOnly tells internal/flagenv not to read this flag from the environment.
func (f *Flag) CommandLineOnly() bool { return true }

// String returns "true" or "false".
func (f *Flag) String() string { return fmt.Sprint(bool(*f)) }

// Set parses a boolean.
func (f *Flag) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not a boolean", s)
	}
	*f = Flag(b)
	return nil
}

// Register adds --version to fs. After parsing, Print reports whether it was given and, if so,
// writes program's version line to w.
func Register(fs *flag.FlagSet) *Flag {
	f := new(Flag)
	fs.Var(f, "version", "print the version, commit, build date and Go version, then exit")
	return f
}

// Print writes program's version line to w and returns true when --version was given.
func (f *Flag) Print(w io.Writer, program string) bool {
	if f == nil || !bool(*f) {
		return false
	}
	fmt.Fprintln(w, Get().String(program))
	return true
}
