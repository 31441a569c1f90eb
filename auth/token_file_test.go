package auth_test

import (
	"strings"
	"testing"

	"github.com/buildfleet/buildfleet/auth"
)

func TestParseClientTokens(t *testing.T) {
	const secret = "s3cr3t-token-0123456789"
	file := `# comment
` + secret + `	team-a/**	read,execute

  # indented comment
` + secret + ` "" READ # trailing comment
other-token-0123456789 * write
`
	tokens, err := auth.ParseClientTokens(strings.NewReader(file), "clients.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 2 {
		t.Fatalf("got %d tokens, want 2", len(tokens))
	}
	first := tokens[0]
	if first.ID != auth.TokenID(secret) || first.Line != 2 {
		t.Errorf("first token: ID %s line %d, want %s line 2", first.ID, first.Line, auth.TokenID(secret))
	}
	wantGrants := []auth.Grant{{Pattern: "team-a/**", Permissions: auth.Read | auth.Execute}, {Pattern: `""`, Permissions: auth.Read}}
	if len(first.Grants) != len(wantGrants) || first.Grants[0] != wantGrants[0] || first.Grants[1] != wantGrants[1] {
		t.Errorf("first token grants %+v, want %+v", first.Grants, wantGrants)
	}
	if tokens[1].Line != 6 || len(tokens[1].Grants) != 1 || tokens[1].Grants[0].Permissions != auth.Write {
		t.Errorf("second token %+v", tokens[1])
	}
	if strings.Contains(first.ID, secret[:8]) {
		t.Errorf("ID %s reveals the token", first.ID)
	}
}

func TestParseClientTokensErrors(t *testing.T) {
	const secret = "s3cr3t-token-0123456789"
	for _, tc := range []struct {
		line string
		want string
	}{
		{secret + " team-a", "clients.txt:3: want TOKEN INSTANCE_NAME_PATTERN PERMISSIONS (permissions a comma list without spaces), got 2 fields"},
		{secret + " team-a read, write", "clients.txt:3: want TOKEN INSTANCE_NAME_PATTERN PERMISSIONS (permissions a comma list without spaces), got 4 fields"},
		{secret + " team-a read,admin", `clients.txt:3: unknown permission "admin" (want a comma list of read, write, execute)`},
		{secret + " team-a read,", `clients.txt:3: unknown permission "" (want a comma list of read, write, execute)`},
		{secret + " team-[a read", `clients.txt:3: instance name pattern "team-[a": syntax error in pattern`},
		{secret + " team-**/x read", `clients.txt:3: instance name pattern "team-**/x": ** is allowed only as the last component (team-a/**) or as * alone`},
		{secret + " /** read", `clients.txt:3: empty instance name pattern (write "" for the empty instance name)`},
		{secret + ` "team-a" read`, `clients.txt:3: instance name pattern "\"team-a\"": quotes are allowed only as "" (the empty instance name)`},
		{secret + "\x7f team-a read", "clients.txt:3: token " + auth.TokenID(secret+"\x7f") + " contains a character other than printable ASCII"},
	} {
		_, err := auth.ParseClientTokens(strings.NewReader("# ok\nok-token-0123456789 * read\n"+tc.line+"\n"), "clients.txt")
		if err == nil {
			t.Errorf("%q: no error", tc.line)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.line, err, tc.want)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q holds the token", err)
		}
	}
}

func TestParseWorkerTokens(t *testing.T) {
	tokens, err := auth.ParseWorkerTokens(strings.NewReader("# workers\n\nw1-0123456789abcdef\n  w2-0123456789abcdef # spot pool\nw1-0123456789abcdef\n"), "workers.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 2 || tokens[0].ID != auth.TokenID("w1-0123456789abcdef") || tokens[1].Line != 4 {
		t.Errorf("got %+v", tokens)
	}
	_, err = auth.ParseWorkerTokens(strings.NewReader("w1-0123456789abcdef\nw2-0123456789abcdef team-a\n"), "workers.txt")
	if err == nil || err.Error() != "workers.txt:2: want one token a line, got 2 fields" || strings.Contains(err.Error(), "w2-") {
		t.Errorf("got %v", err)
	}
}

func TestGrantMatches(t *testing.T) {
	for _, tc := range []struct {
		pattern  string
		instance string
		want     bool
	}{
		{"*", "", true},
		{"*", "team-a", true},
		{"*", "team-a/ci/linux", true},
		{`""`, "", true},
		{`""`, "team-a", false},
		{"team-a", "team-a", true},
		{"team-a", "team-a/ci", false},
		{"team-a", "team-ab", false},
		{"team-a/*", "team-a/ci", true},
		{"team-a/*", "team-a", false},
		{"team-a/*", "team-a/ci/linux", false},
		{"team-a/**", "team-a", true},
		{"team-a/**", "team-a/ci", true},
		{"team-a/**", "team-a/ci/linux", true},
		{"team-a/**", "team-ab", false},
		{"team-a/**", "team-b/team-a", false},
		{"team-a/**", "", false},
		{"team-*/**", "team-b/ci", true},
		{"team-*/**", "other/ci", false},
		{"team-?", "team-a", true},
		{"team-[ab]", "team-b", true},
		{"team-[ab]", "team-c", false},
	} {
		g := auth.Grant{Pattern: tc.pattern, Permissions: auth.Read}
		if got := g.Matches(tc.instance); got != tc.want {
			t.Errorf("Grant{%q}.Matches(%q) = %v, want %v", tc.pattern, tc.instance, got, tc.want)
		}
	}
}

func TestPermissions(t *testing.T) {
	p, err := auth.ParsePermissions("execute,READ")
	if err != nil || p != auth.Read|auth.Execute || p.String() != "read,execute" {
		t.Errorf("ParsePermissions = %v (%s), %v", p, p, err)
	}
	if !p.Has(auth.Read) || p.Has(auth.Read|auth.Write) {
		t.Errorf("Has is wrong for %s", p)
	}
	id := auth.Identity{Kind: auth.Client, Grants: []auth.Grant{{Pattern: "team-a/**", Permissions: auth.Read}, {Pattern: "team-a/ci", Permissions: auth.Write}}}
	if !id.Allows("team-a/ci", auth.Read|auth.Write) || id.Allows("team-a", auth.Write) {
		t.Errorf("grants on one instance do not add up: %s on team-a/ci, %s on team-a", id.PermissionsOn("team-a/ci"), id.PermissionsOn("team-a"))
	}
}
