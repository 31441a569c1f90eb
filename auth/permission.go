package auth

import (
	"fmt"
	"strings"
)

// Permission is a set of things a client token may do on the instance names of one grant.
type Permission uint8

// The permissions of a client grant. Uploading to the CAS (BatchUpdateBlobs, ByteStream Write)
// needs Write or Execute: a read-only token cannot upload.
const (
	// Read allows reading the CAS (FindMissingBlobs, BatchReadBlobs, GetTree, ByteStream Read)
	// and the action cache (GetActionResult).
	Read Permission = 1 << iota
	// Write allows writing the action cache (UpdateActionResult) and uploading to the CAS.
	Write
	// Execute allows Execute, WaitExecution and the Operations service, and uploading to the CAS.
	Execute
)

var permissionNames = []struct {
	p    Permission
	name string
}{{Read, "read"}, {Write, "write"}, {Execute, "execute"}}

// ParsePermissions parses a comma-separated list of "read", "write" and "execute".
func ParsePermissions(s string) (Permission, error) {
	var p Permission
	for _, field := range strings.Split(s, ",") {
		field = strings.TrimSpace(field)
		found := false
		for _, n := range permissionNames {
			if strings.EqualFold(field, n.name) {
				p |= n.p
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown permission %q (want a comma list of read, write, execute)", field)
		}
	}
	return p, nil
}

// Has reports whether p includes every permission of q.
func (p Permission) Has(q Permission) bool { return p&q == q }

// String returns p as a comma list, such as "read,write", or "none".
func (p Permission) String() string {
	var names []string
	for _, n := range permissionNames {
		if p&n.p != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}
