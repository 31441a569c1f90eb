// Package flagenv lets every flag of a FlagSet fall back to an environment variable named after
// it: --max-cache-size reads BUILDFLEET_MAX_CACHE_SIZE when the flag is not given.
package flagenv

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// EnvName returns the environment variable consulted for flag name under prefix, e.g.
// EnvName("BUILDFLEET", "max-cache-size") = "BUILDFLEET_MAX_CACHE_SIZE".
func EnvName(prefix, name string) string {
	return prefix + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(name))
}

// Parse parses args into fs, then sets every flag not given on the command line from its
// environment variable (looked up with getenv, os.Getenv when nil), if that is set. Flags that
// may be repeated receive the variable's value split on commas. Flags whose Value has a
// CommandLineOnly method returning true (--version) are never read from the environment.
func Parse(fs *flag.FlagSet, prefix string, args []string, getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil || commandLineOnly(f) {
			return
		}
		env := EnvName(prefix, f.Name)
		v := getenv(env)
		if v == "" {
			return
		}
		values := []string{v}
		if r, ok := f.Value.(interface{ Repeatable() bool }); ok && r.Repeatable() {
			values = strings.Split(v, ",")
		}
		for _, one := range values {
			if e := f.Value.Set(strings.TrimSpace(one)); e != nil {
				err = fmt.Errorf("invalid value %q for %s (from $%s): %v", one, "--"+f.Name, env, e)
				return
			}
		}
	})
	return err
}

// AnnotateUsage appends "(env NAME)" to each flag's usage text so --help shows the variables.
func AnnotateUsage(fs *flag.FlagSet, prefix string) {
	fs.VisitAll(func(f *flag.Flag) {
		if commandLineOnly(f) {
			return
		}
		f.Usage += " (env " + EnvName(prefix, f.Name) + ")"
	})
}

func commandLineOnly(f *flag.Flag) bool {
	c, ok := f.Value.(interface{ CommandLineOnly() bool })
	return ok && c.CommandLineOnly()
}

// Strings is a repeatable string flag; from the environment it takes a comma-separated list.
type Strings []string

// String returns the values joined by commas.
func (s *Strings) String() string { return strings.Join(*s, ",") }

// Set appends one value.
func (s *Strings) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// Repeatable marks Strings as a repeatable flag.
func (s *Strings) Repeatable() bool { return true }
