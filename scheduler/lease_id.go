package scheduler

import "github.com/buildfleet/buildfleet/internal/digest"

// newLeaseID returns a fresh lease id for running action d in instance,
// "{instance}/leases/{uuid}/{hash}-{size}" ("leases/{uuid}/{hash}-{size}" for the empty instance
// name). Like operation names, lease ids carry the instance and the action digest, so that a
// scheduler that never handed a lease out (a new leader after a failover) can adopt it when a bot
// reports it, rebuilding its operation from the Action in the CAS instead of running it again.
func newLeaseID(instance string, d digest.Digest) string {
	return newOperationName(instance, d).format("leases")
}

// parseLeaseID parses a lease id made by newLeaseID. Anything else (an id of another server, or
// of an older buildfleet) is INVALID_ARGUMENT.
func parseLeaseID(id string) (operationName, error) {
	return parseCollectionName(id, "lease id", "leases")
}
