package cluster_test

import (
	"strings"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/internal/clustertest"
	"github.com/buildfleet/buildfleet/scheduler"
)

// A replica whose --advertise-address is a load balancer's in front of several replicas can
// pass one check (the balancer happened to route it to this replica). The address is checked
// several times, each over a new connection, and every answer must come from this replica, so
// the replica never leads through such an address; a leader whose address stops reaching it
// during its term (re-checked every session TTL) steps down. The load balancer here is a
// round-robin TCP proxy whose first two connections go to the replica and the third to another.
func TestReplicaAdvertisingALoadBalancerNeverLeads(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	// other answers the health service as another replica (of another election).
	other := startReplica(t, etcd, st, cluster.Config{Prefix: "/test/other", SessionTTL: testCluster.SessionTTL, RetryInterval: testCluster.RetryInterval}, scheduler.Config{})
	lb := startProxy(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{advertise: lb.addr})
	// The balancer sends two connections in three to a: one or two checks would pass.
	lb.setBackends(a.addr, a.addr, other.addr)
	waitFor(t, "the replica to find its advertise address wrong", 10*time.Second, func() bool {
		return strings.Contains(strings.Join(a.node.Status().Problems, ";"), "is it a load balancer's address?")
	})
	if a.node.Terms() != 0 || a.leads() {
		t.Fatalf("a replica advertising a load balancer's address led (%d terms)", a.node.Terms())
	}
	if s := a.node.Status(); s.AdvertiseOK || s.EtcdSession {
		t.Fatalf("status %+v, want advertise address not OK and no campaign", s)
	}

	// Once every connection reaches a, it leads; when the address turns to another replica
	// during the term, a steps down at the next re-check.
	lb.setBackends(a.addr)
	waitFor(t, "the replica to lead once its address reaches it", 10*time.Second, a.leads)
	lb.setBackends(other.addr)
	turned := time.Now()
	waitFor(t, "the leader to step down", 3*testCluster.SessionTTL, func() bool { return !a.leads() })
	t.Logf("advertise address turned to another replica → leader stepped down: %s (session TTL %s)", time.Since(turned).Round(time.Millisecond), testCluster.SessionTTL)
	if !strings.Contains(a.logs.String(), "The advertise address no longer reaches this replica: stepping down") {
		t.Fatalf("the leader logged no reason for stepping down:\n%s", a.logs.String())
	}
}

// A leader whose advertise address goes unanswered for one round of its self-check (a busy
// machine, a lost packet) keeps leading; only selfRecheckStrikes unanswered rounds in a row make
// it step down. The address here is a proxy that freezes (TCP up, no byte passes).
func TestLeaderSurvivesOneUnansweredSelfCheck(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	st := newShared(t)
	lb := startProxy(t)
	a := startReplica(t, etcd, st, testCluster, scheduler.Config{}, replicaOpts{advertise: lb.addr})
	lb.setBackends(a.addr)
	waitFor(t, "the replica to lead", 10*time.Second, a.leads)

	lb.pause()
	waitFor(t, "one unanswered self-check", 3*testCluster.SessionTTL, func() bool {
		return strings.Contains(a.logs.String(), `"strikes":1`)
	})
	lb.resume()
	// Two more rounds answered: still the same term.
	time.Sleep(2*testCluster.SessionTTL + time.Second)
	if !a.leads() || a.node.Terms() != 1 {
		t.Fatalf("after one unanswered self-check: leads=%v terms=%d, want the first term to go on\n%s", a.leads(), a.node.Terms(), a.logs.String())
	}

	lb.pause()
	defer lb.resume()
	waitFor(t, "the leader to step down after unanswered self-checks in a row", 4*testCluster.SessionTTL, func() bool { return !a.leads() })
	if !strings.Contains(a.logs.String(), "The advertise address no longer reaches this replica: stepping down") {
		t.Fatalf("the leader logged no reason for stepping down:\n%s", a.logs.String())
	}
}
