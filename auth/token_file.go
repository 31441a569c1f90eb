package auth

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// minTokenLength is the length below which a token is accepted but reported as weak.
const minTokenLength = 16

// ClientToken is one token of a client token file with the grants of all its lines.
//
// The file format is one grant a line, `TOKEN INSTANCE_NAME_PATTERN PERMISSIONS`, separated by
// spaces or tabs; blank lines and lines starting with `#` are ignored, as is anything after a
// field starting with `#` at the end of a line. PERMISSIONS is a comma list (without spaces) of
// `read`, `write` and `execute`. Several lines may name the same token: its grants add up.
// INSTANCE_NAME_PATTERN is matched against the request's instance name as described on
// Grant.Matches. For example:
//
//	# CI writes the cache of team-a's instances; laptops only read it.
//	3f9c1e0b7a2d4c8e9f1a2b3c4d5e6f70 team-a/**    read,write,execute
//	7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d team-a/**    read,execute
//	7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d ""           read    # Bazel's default (empty) instance
type ClientToken struct {
	// ID is the token's masked identifier (see TokenID), safe to log.
	ID string
	// Line is the line of the token's first grant in its file.
	Line int
	// Grants are the instance patterns and permissions of every line naming the token.
	Grants []Grant

	sum   [sha256.Size]byte
	short bool
}

// WorkerToken is one token of a worker token file: one token a line, blank lines and lines
// starting with `#` ignored.
type WorkerToken struct {
	// ID is the token's masked identifier (see TokenID), safe to log.
	ID string
	// Line is the token's line in its file.
	Line int

	sum   [sha256.Size]byte
	short bool
}

// Grant allows a client token Permissions on the instance names its Pattern matches.
type Grant struct {
	// Pattern is the instance name pattern as written in the token file.
	Pattern string
	// Permissions is what the grant allows on the matching instance names.
	Permissions Permission
}

// Matches reports whether the grant's pattern matches instance. The patterns are:
//
//   - `*` alone matches every instance name, including the empty one and names with slashes;
//   - `""` (two double quotes) matches only the empty instance name, the default of Bazel and Pants;
//   - a pattern ending in `/**` matches the instance names whose leading components match the
//     part before it, and that part alone: `team-a/**` matches `team-a`, `team-a/ci` and
//     `team-a/ci/linux`;
//   - any other pattern follows path.Match: `*` matches any run of characters except `/`, `?`
//     one such character, `[a-z]` a character class, `\` escapes; `team-a/*` matches `team-a/ci`
//     but neither `team-a` nor `team-a/ci/linux`. A name without wildcards matches only itself.
func (g Grant) Matches(instance string) bool {
	return matchInstance(g.Pattern, instance)
}

func matchInstance(pattern, instance string) bool {
	switch {
	case pattern == "*":
		return true
	case pattern == `""`:
		return instance == ""
	case strings.HasSuffix(pattern, "/**"):
		prefix := strings.TrimSuffix(pattern, "/**")
		n := strings.Count(prefix, "/") + 1
		parts := strings.Split(instance, "/")
		if instance == "" || len(parts) < n {
			return false
		}
		ok, err := path.Match(prefix, strings.Join(parts[:n], "/"))
		return ok && err == nil
	default:
		ok, err := path.Match(pattern, instance)
		return ok && err == nil
	}
}

// checkPattern validates an instance name pattern.
func checkPattern(pattern string) error {
	if pattern == "*" || pattern == `""` {
		return nil
	}
	body := strings.TrimSuffix(pattern, "/**")
	if body == "" {
		return errors.New(`empty instance name pattern (write "" for the empty instance name)`)
	}
	if strings.Contains(body, "**") {
		return fmt.Errorf("instance name pattern %q: ** is allowed only as the last component (team-a/**) or as * alone", pattern)
	}
	if strings.Contains(body, `"`) {
		return fmt.Errorf(`instance name pattern %q: quotes are allowed only as "" (the empty instance name)`, pattern)
	}
	if _, err := path.Match(body, ""); err != nil {
		return fmt.Errorf("instance name pattern %q: %v", pattern, err)
	}
	return nil
}

// TokenID returns the masked identifier of token that logs and error messages use in place of
// the token: "tok:" followed by the first 8 hexadecimal digits of its SHA-256.
func TokenID(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "tok:" + hex.EncodeToString(sum[:4])
}

// checkToken validates a token's characters: it must be sendable in a gRPC header value.
func checkToken(token string) error {
	for i := 0; i < len(token); i++ {
		if c := token[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("token %s contains a character other than printable ASCII", TokenID(token))
		}
	}
	return nil
}

// LoadClientTokens reads and parses the client token file at path.
func LoadClientTokens(path string) ([]ClientToken, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("client tokens file: %w", err)
	}
	defer f.Close()
	return ParseClientTokens(f, path)
}

// ParseClientTokens parses a client token file (format on ClientToken) read from r; name is
// the file's name in errors. Errors name the file and line but never the token.
func ParseClientTokens(r io.Reader, name string) ([]ClientToken, error) {
	var tokens []ClientToken
	index := map[[sha256.Size]byte]int{}
	err := scanLines(r, name, func(line int, fields []string) error {
		if len(fields) != 3 {
			return fmt.Errorf("want TOKEN INSTANCE_NAME_PATTERN PERMISSIONS (permissions a comma list without spaces), got %d fields", len(fields))
		}
		token, pattern := fields[0], fields[1]
		if err := checkToken(token); err != nil {
			return err
		}
		if err := checkPattern(pattern); err != nil {
			return err
		}
		perms, err := ParsePermissions(fields[2])
		if err != nil {
			return err
		}
		sum := sha256.Sum256([]byte(token))
		i, ok := index[sum]
		if !ok {
			i = len(tokens)
			index[sum] = i
			tokens = append(tokens, ClientToken{ID: TokenID(token), Line: line, sum: sum, short: len(token) < minTokenLength})
		}
		tokens[i].Grants = append(tokens[i].Grants, Grant{Pattern: pattern, Permissions: perms})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tokens, nil
}

// LoadWorkerTokens reads and parses the worker token file at path.
func LoadWorkerTokens(path string) ([]WorkerToken, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("worker tokens file: %w", err)
	}
	defer f.Close()
	return ParseWorkerTokens(f, path)
}

// ParseWorkerTokens parses a worker token file (one token a line) read from r; name is the
// file's name in errors. A token listed twice is kept once.
func ParseWorkerTokens(r io.Reader, name string) ([]WorkerToken, error) {
	var tokens []WorkerToken
	seen := map[[sha256.Size]byte]bool{}
	err := scanLines(r, name, func(line int, fields []string) error {
		if len(fields) != 1 {
			return fmt.Errorf("want one token a line, got %d fields", len(fields))
		}
		if err := checkToken(fields[0]); err != nil {
			return err
		}
		sum := sha256.Sum256([]byte(fields[0]))
		if !seen[sum] {
			seen[sum] = true
			tokens = append(tokens, WorkerToken{ID: TokenID(fields[0]), Line: line, sum: sum, short: len(fields[0]) < minTokenLength})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tokens, nil
}

// scanLines calls parse with the fields of each line of r that is neither blank nor a comment,
// dropping a trailing comment, and prefixes its errors with "name:line: ".
func scanLines(r io.Reader, name string, parse func(line int, fields []string) error) error {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for s.Scan() {
		line++
		fields := strings.Fields(s.Text())
		for i, f := range fields {
			if strings.HasPrefix(f, "#") {
				fields = fields[:i]
				break
			}
		}
		if len(fields) == 0 {
			continue
		}
		if err := parse(line, fields); err != nil {
			return fmt.Errorf("%s:%d: %w", name, line, err)
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("%s:%d: %w", name, line+1, err)
	}
	return nil
}
