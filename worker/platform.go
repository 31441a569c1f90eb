package worker

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
)

// Property is one platform property a worker advertises, such as OSFamily=linux. A key may
// appear more than once with different values.
type Property struct {
	Key   string
	Value string
}

// String returns "KEY=VALUE".
func (p Property) String() string { return p.Key + "=" + p.Value }

// ParseProperty parses "KEY=VALUE". The key must be non-empty; the value may be empty.
func ParseProperty(s string) (Property, error) {
	k, v, ok := strings.Cut(s, "=")
	k = strings.TrimSpace(k)
	if !ok || k == "" {
		return Property{}, fmt.Errorf("invalid platform property %q: want KEY=VALUE", s)
	}
	return Property{Key: k, Value: strings.TrimSpace(v)}, nil
}

// ISA returns the REAPI instruction set name of a Go architecture: amd64 is "x86-64", arm64
// is "aarch64", 386 is "x86-32"; any other architecture keeps its Go name.
func ISA(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86-64"
	case "arm64":
		return "aarch64"
	case "386":
		return "x86-32"
	default:
		return goarch
	}
}

// CompletePlatform returns props with OSFamily (runtime.GOOS) and ISA (of runtime.GOARCH)
// added when props does not name them, sorted by key then value, without duplicates.
func CompletePlatform(props []Property) []Property {
	out := make([]Property, 0, len(props)+2)
	has := map[string]bool{}
	seen := map[Property]bool{}
	for _, p := range props {
		has[p.Key] = true
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	if !has["OSFamily"] {
		out = append(out, Property{Key: "OSFamily", Value: runtime.GOOS})
	}
	if !has["ISA"] {
		out = append(out, Property{Key: "ISA", Value: ISA(runtime.GOARCH)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Value < out[j].Value
	})
	return out
}

// platformString formats properties as "K=V,K=V" for logs.
type platformString []Property

func (ps platformString) String() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
