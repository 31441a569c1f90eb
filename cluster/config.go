// Package cluster runs buildfleet's scheduler as one of several replicas behind one address.
// etcd elects a leader (go.etcd.io/etcd/client/v3/concurrency); the leader runs the in-memory
// scheduler, and every replica serves the Execution, longrunning Operations and Bots services
// by forwarding each call to it: locally on the leader, over gRPC to the leader's advertise
// address elsewhere. While no leader is known (a failover) calls are held, not failed, and a
// call whose leader goes away mid-stream is resumed on the next one (an Execute stream
// continues as a WaitExecution on its operation name).
//
// Fencing: the leader renews its etcd lease itself and stops handing out leases (its scheduler
// is closed) once a renewal sent at time t is not confirmed by t + TTL - margin, before etcd can
// let another replica win; two replicas never both hand out leases. The term's scheduler also
// checks that validity synchronously (scheduler.Config.Fence) before it acts on a call.
//
// A replica campaigns only once its advertise address reaches itself (a gRPC health check
// carrying its random node id), so a wrong --advertise-address never becomes the address every
// call is forwarded to. Node.Status and Node.ReadyHandler (/readyz) tell a load balancer and an
// operator whether the replica can serve.
package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Config holds a replica's cluster settings.
type Config struct {
	// Endpoints are the etcd client URLs (http://host:2379).
	Endpoints []string
	// AdvertiseAddress is the host:port the other replicas reach this replica's gRPC port at;
	// it is the value the leader writes to etcd.
	AdvertiseAddress string
	// AdvertiseHTTPAddress is the host:port at which the other replicas reach this replica's
	// HTTP server (/workers); while it leads, followers fetch its worker view there. Empty:
	// followers answer /workers with 503.
	AdvertiseHTTPAddress string
	// Prefix is the etcd key prefix of the election. Default "/buildfleet/scheduler/leader".
	Prefix string
	// SessionTTL is the etcd lease TTL of the replica's session: a leader that dies is replaced
	// about this long after. Default 3 s.
	SessionTTL time.Duration
	// HoldTimeout bounds how long a call is held while no leader is known (or the known one
	// does not answer) before it fails with UNAVAILABLE. Default 20 s.
	HoldTimeout time.Duration
	// RetryInterval is the pause between two attempts to reach a leader that did not answer.
	// Default 100 ms.
	RetryInterval time.Duration
}

// Defaults of Config.
const (
	DefaultPrefix        = "/buildfleet/scheduler/leader"
	DefaultSessionTTL    = 3 * time.Second
	DefaultHoldTimeout   = 20 * time.Second
	DefaultRetryInterval = 100 * time.Millisecond
)

// withDefaults returns c with unset fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.HoldTimeout <= 0 {
		c.HoldTimeout = DefaultHoldTimeout
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = DefaultRetryInterval
	}
	return c
}

// Validate reports a missing or malformed setting.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("no etcd endpoints")
	}
	if c.AdvertiseAddress == "" || !strings.Contains(c.AdvertiseAddress, ":") {
		return fmt.Errorf("advertise address %q: want host:port the other replicas can reach", c.AdvertiseAddress)
	}
	if c.SessionTTL != 0 && c.SessionTTL < 2*time.Second {
		return fmt.Errorf("session TTL %s: must be at least 2s (etcd's smallest lease TTL)", c.SessionTTL)
	}
	if c.SessionTTL%time.Second != 0 {
		return fmt.Errorf("session TTL %s: must be whole seconds", c.SessionTTL)
	}
	return nil
}

// EtcdClientConfig returns the etcd client settings a replica uses for endpoints: it reconnects
// to an etcd that was away within a second of its return (gRPC's default backoff grows to two
// minutes, and a reconnection a few seconds late delays the next election as much).
func EtcdClientConfig(endpoints []string) clientv3.Config {
	return clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})},
	}
}
