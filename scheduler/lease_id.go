package scheduler

import (
	"github.com/google/uuid"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// newLeaseID returns a fresh lease id for running action d in instance,
// "{instance}/leases/{uuid}/{hash}-{size}" ("leases/{uuid}/{hash}-{size}" for the empty instance
// name), whose uuid starts with the scheduler's epoch (8 hex digits). Like operation names, lease
// ids carry the instance and the action digest, so that a scheduler that never handed a lease
// out (a new leader after a failover) can adopt it when a bot reports it, rebuilding its
// operation from the Action in the CAS instead of running it again; the epoch tells the leases
// a scheduler handed out itself (never adopted) from those of its predecessors.
func newLeaseID(epoch, instance string, d digest.Digest) string {
	n := newOperationName(instance, d)
	n.id = epoch + n.id[len(epoch):]
	return n.format("leases")
}

// newEpoch returns a random epoch for newLeaseID: 8 hex digits.
func newEpoch() string { return uuid.NewString()[:8] }

// parseLeaseID parses a lease id made by newLeaseID. Anything else (an id of another server, or
// of an older buildfleet) is INVALID_ARGUMENT.
func parseLeaseID(id string) (operationName, error) {
	return parseCollectionName(id, "lease id", "leases")
}
