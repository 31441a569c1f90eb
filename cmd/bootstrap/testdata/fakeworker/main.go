// Command fakeworker stands in for the worker in the bootstrapper's tests: it writes its pid,
// arguments and BUILDFLEET_* environment to the file named by $FAKEWORKER_OUT, one per line.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

func main() {
	lines := []string{fmt.Sprintf("pid=%d", os.Getpid())}
	for _, a := range os.Args[1:] {
		lines = append(lines, "arg="+a)
	}
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BUILDFLEET_") {
			env = append(env, "env="+kv)
		}
	}
	sort.Strings(env)
	lines = append(lines, env...)
	if err := os.WriteFile(os.Getenv("FAKEWORKER_OUT"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
