package auth

import "context"

// Kind tells client identities from worker identities.
type Kind int

// The kinds of identity.
const (
	// Client is a caller holding a client token: Pants, Bazel, CI.
	Client Kind = iota + 1
	// Worker is a caller holding a worker token.
	Worker
)

// String returns "client" or "worker".
func (k Kind) String() string {
	switch k {
	case Client:
		return "client"
	case Worker:
		return "worker"
	}
	return "unknown"
}

// Identity is an authenticated caller.
type Identity struct {
	// Kind is Client or Worker.
	Kind Kind
	// Name is the masked identifier of the caller's token (see TokenID), safe to log.
	Name string
	// Grants are a client's grants; empty for a worker. They are shared: do not modify them.
	Grants []Grant
}

// PermissionsOn returns the union of the permissions of the identity's grants that match
// instance. A worker has no permissions of its own: what it may call is decided per method.
func (id Identity) PermissionsOn(instance string) Permission {
	var p Permission
	for _, g := range id.Grants {
		if g.Matches(instance) {
			p |= g.Permissions
		}
	}
	return p
}

// Allows reports whether the identity holds every permission of p on instance.
func (id Identity) Allows(instance string, p Permission) bool {
	return id.Kind == Client && id.PermissionsOn(instance).Has(p)
}

type identityKey struct{}

// NewContext returns a copy of ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// FromContext returns the identity the interceptors authenticated for the call of ctx. It
// reports false when authentication is off, and for public methods such as health checks.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}
