package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Services of the replica's gRPC health service (grpc.health.v1.Health, which needs no token).
const (
	// ReplicaHealthPrefix + a node id is SERVING only on the replica of that id: a replica
	// checks with its own id that its advertise address reaches itself.
	ReplicaHealthPrefix = "buildfleet.cluster.Replica/"
	// LeaderHealthService is SERVING only on the replica that leads now.
	LeaderHealthService = "buildfleet.cluster.Leader"
)

// healthServer is the replica's grpc.health.v1.Health service: "" is SERVING while the process
// serves, LeaderHealthService while it leads, ReplicaHealthPrefix+ID on the replica of that id.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	n *Node
}

// Check answers the service's status; an unknown service is NOT_FOUND.
func (h *healthServer) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	serving := healthpb.HealthCheckResponse_SERVING
	switch s := req.GetService(); {
	case s == "":
	case s == LeaderHealthService:
		if _, leads := h.n.Leader(); !leads {
			serving = healthpb.HealthCheckResponse_NOT_SERVING
		}
	case strings.HasPrefix(s, ReplicaHealthPrefix):
		if strings.TrimPrefix(s, ReplicaHealthPrefix) != h.n.id {
			return nil, status.Errorf(codes.NotFound, "This is scheduler replica %s, not %s", h.n.id, strings.TrimPrefix(s, ReplicaHealthPrefix))
		}
	default:
		return nil, status.Errorf(codes.NotFound, "Unknown health service %q", s)
	}
	return &healthpb.HealthCheckResponse{Status: serving}, nil
}

// probeTimeout bounds one health check of the replica itself or of the leader.
func (n *Node) probeTimeout() time.Duration { return max(n.cfg.SessionTTL/3, 500*time.Millisecond) }

// selfChecks is how many checks of the advertise address, each over a new connection, must all
// answer from this replica: one check through a load balancer's address may happen to be
// routed to this replica, several new connections are spread over the replicas behind it.
const selfChecks = 5

// checkSelf calls the health service at the advertise address with this replica's node id,
// selfChecks times over a new connection each, and records whether every answer came from this
// replica. A failure is logged as an error naming the address (again only once it changes).
func (n *Node) checkSelf(ctx context.Context) error {
	var err error
	for i := 0; i < selfChecks && err == nil && ctx.Err() == nil; i++ {
		err = n.checkSelfOnce(ctx)
		if err != nil && i > 0 {
			err = fmt.Errorf("check %d of %d: %w (the first ones reached this replica: is it a load balancer's address?)", i+1, selfChecks, err)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	n.mu.Lock()
	first, was, leads := !n.selfChecked, n.selfErr, n.local != nil
	n.selfChecked, n.selfErr = true, err
	n.mu.Unlock()
	switch {
	case leads:
		// The leader's re-checks log their own outcome (recheckSelf).
	case err != nil && (first || was == nil):
		n.log.Error().Str("advertise_address", n.cfg.AdvertiseAddress).Str("reason", err.Error()).
			Msgf("--advertise-address %s does not reach this replica: it will not campaign for leadership (other replicas could not forward to it); it keeps serving as a follower. Fix --advertise-address", n.cfg.AdvertiseAddress)
	case err == nil && was != nil:
		n.log.Info().Str("advertise_address", n.cfg.AdvertiseAddress).Msg("The advertise address reaches this replica now: campaigning for leadership")
	}
	return err
}

// errAnsweredElsewhere marks a self-check answered by another server: the advertise address
// certainly leads elsewhere, unlike a check that timed out (a busy machine, a lost packet).
var errAnsweredElsewhere = errors.New("answered by another server")

// checkSelfOnce makes one check of the advertise address over a new connection.
func (n *Node) checkSelfOnce(ctx context.Context) error {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, n.dialOpts...)
	conn, err := grpc.NewClient("passthrough:///"+n.cfg.AdvertiseAddress, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, n.probeTimeout())
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: ReplicaHealthPrefix + n.id})
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.NotFound:
		return fmt.Errorf("%w: another scheduler replica answers there: %s", errAnsweredElsewhere, status.Convert(err).Message())
	case codes.Unimplemented:
		return fmt.Errorf("%w: another server answers there (it has no buildfleet health service)", errAnsweredElsewhere)
	default:
		return fmt.Errorf("it does not answer: %s", status.Convert(err).Message())
	}
}

// probeLeader checks, every third of the session TTL while this replica follows, that the
// leader answers its health service, and records the outcome for Status. Failures are logged
// (rate-limited) with the leader's address.
func (n *Node) probeLeader(ctx context.Context) {
	for ctx.Err() == nil {
		n.pause(ctx, n.probeTimeout())
		n.mu.Lock()
		leader, leads := n.leader, n.local != nil
		if leads || leader == "" || n.isSelfLocked(leader) {
			n.probe = leaderProbe{}
			n.mu.Unlock()
			continue
		}
		conn, err := n.connLocked(leader)
		n.mu.Unlock()
		serving := false
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, n.probeTimeout())
			var resp *healthpb.HealthCheckResponse
			resp, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: LeaderHealthService})
			cancel()
			serving = err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
		}
		if ctx.Err() != nil {
			return
		}
		// NOT_SERVING (an old leader that stepped down, its key not yet gone) still answers: a
		// new leader is about to be elected, nothing is wrong with this replica; Status says
		// that it does not lead.
		if err != nil {
			err = fmt.Errorf("%s", status.Convert(err).Message())
		}
		n.leaderReached(leader, err, serving)
	}
}

// leaderReached records the outcome of a call to the leader at addr (err nil: it answered;
// leads: it answered that it leads).
func (n *Node) leaderReached(addr string, err error, leads bool) {
	n.mu.Lock()
	if n.probe.addr != addr {
		n.probe = leaderProbe{addr: addr}
	}
	n.probe.err, n.probe.leads = err, leads
	if err == nil {
		n.probe.failingSince = time.Time{}
	} else if n.probe.failingSince.IsZero() {
		n.probe.failingSince = n.clk.Now()
	}
	n.mu.Unlock()
	if err != nil {
		if e := n.warnLimited("leader-unreachable"); e != nil {
			e.Str("leader", addr).Str("reason", err.Error()).Msg("Cannot reach the scheduler leader; calls to it are held and retried")
		}
	}
}

// Status is a replica's view of the cluster, as /readyz shows it.
type Status struct {
	// Ready is false when this replica cannot serve scheduler calls while others may: the
	// leader has not answered it for longer than twice the session TTL.
	Ready bool `json:"ready"`
	// Role is "leader" or "follower".
	Role string `json:"role"`
	// NodeID is the replica's random id (new in every process).
	NodeID string `json:"node_id"`
	// AdvertiseAddress is the replica's --advertise-address; AdvertiseOK whether its last check
	// reached this replica (false until checked).
	AdvertiseAddress string `json:"advertise_address"`
	AdvertiseOK      bool   `json:"advertise_address_ok"`
	// EtcdSession is whether the replica holds an etcd session (campaigns or leads).
	EtcdSession bool `json:"etcd_session"`
	// Leader is the leader's advertise address ("" while none is known, and while the one etcd
	// last named is not confirmed: this replica has no etcd session, or it answers that it does
	// not lead); LeaderReachable whether it answered this replica's last check as the leader
	// (always true on the leader).
	Leader          string `json:"leader"`
	LeaderReachable bool   `json:"leader_reachable"`
	// Problems says in words what is wrong, if anything.
	Problems []string `json:"problems"`
}

// Status returns the replica's view of the cluster.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{
		Ready: true, Role: "follower", NodeID: n.id, AdvertiseAddress: n.cfg.AdvertiseAddress,
		AdvertiseOK: n.selfChecked && n.selfErr == nil, EtcdSession: n.session, Leader: n.leader,
		Problems: []string{},
	}
	probed := n.leader != "" && n.probe.addr == n.leader
	if n.local != nil {
		st.Role, st.LeaderReachable = "leader", true
	} else if probed {
		st.LeaderReachable = n.probe.err == nil && n.probe.leads
	}
	// Without an etcd session (etcd unreachable: this replica would hold one otherwise), the
	// leader etcd last named may have stepped down since; it is named only while it answers
	// that it leads.
	stale := n.local == nil && !n.session && n.selfChecked && n.selfErr == nil
	if (stale || probed && n.probe.err == nil && !n.probe.leads) && !st.LeaderReachable {
		st.Leader = ""
	}
	if n.selfErr != nil {
		st.Problems = append(st.Problems, fmt.Sprintf("advertise address %s unreachable: %v; this replica will not lead", n.cfg.AdvertiseAddress, n.selfErr))
	}
	if !n.session {
		st.Problems = append(st.Problems, "no etcd session")
	}
	switch {
	case st.LeaderReachable:
	case n.leader == "":
		st.Problems = append(st.Problems, "no leader known: scheduler calls are held")
	case n.probe.addr == n.leader && n.probe.err != nil:
		st.Problems = append(st.Problems, fmt.Sprintf("cannot reach leader %s: %v", n.leader, n.probe.err))
		if n.clk.Now().Sub(n.probe.failingSince) >= 2*n.cfg.SessionTTL {
			st.Ready = false
		}
	case n.isSelfLocked(n.leader):
		st.Problems = append(st.Problems, "etcd names this replica leader but it does not lead (stepping down or just elected): scheduler calls are held")
	case probed && n.probe.err == nil:
		st.Problems = append(st.Problems, fmt.Sprintf("%s, named leader in etcd, answers that it does not lead (it stepped down, or was just elected): scheduler calls are held", n.leader))
	case stale:
		st.Problems = append(st.Problems, fmt.Sprintf("the leader etcd last named, %s, is not confirmed without an etcd session: scheduler calls are held", n.leader))
	default:
		st.Problems = append(st.Problems, fmt.Sprintf("leader %s not checked yet", n.leader))
	}
	return st
}

// ReadyHandler serves the replica's Status as JSON: 200 when it is ready, 503 when not. It
// answers only while the process runs (a stopped process does not answer at all), so it suits
// a load balancer's HTTP health check (HAProxy option httpchk, a Kubernetes readinessProbe).
// States the whole cluster shares (no leader during a failover, etcd unreachable) do not make a
// replica unready: every replica holds scheduler calls then and serves the cache, and a load
// balancer with no ready replica would refuse even the cache.
func (n *Node) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		st := n.Status()
		w.Header().Set("Content-Type", "application/json")
		if !st.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(st)
	})
}

// httpKey is the etcd key under which the replica advertising addr publishes its HTTP address.
func (n *Node) httpKey(addr string) string { return n.cfg.Prefix + "-http/" + addr }

// forwardedHTTPHeader marks an HTTP request a replica forwarded to the leader.
const forwardedHTTPHeader = "X-Buildfleet-Forwarded"

// WorkersHandler serves the leader's worker view (scheduler.WorkersHandler). A follower fetches
// it from the leader's HTTP address (Config.AdvertiseHTTPAddress, published in etcd) and
// answers with it, the leader's address in the X-Buildfleet-Leader header; it answers 503 while
// no leader is known or its page cannot be fetched.
func (n *Node) WorkersHandler() http.Handler {
	client := &http.Client{Timeout: 10 * time.Second}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		local, leader := n.local, n.leader
		n.mu.Unlock()
		if local != nil {
			w.Header().Set("X-Buildfleet-Leader", n.cfg.AdvertiseAddress)
			local.sched.WorkersHandler().ServeHTTP(w, r)
			return
		}
		if leader == "" {
			http.Error(w, "no scheduler leader is elected yet; try again in a few seconds", http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get(forwardedHTTPHeader) != "" {
			http.Error(w, "this scheduler replica does not lead; the leader is "+leader, http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), n.cfg.SessionTTL)
		resp, err := n.cli.Get(ctx, n.httpKey(leader))
		cancel()
		if err != nil || len(resp.Kvs) == 0 {
			http.Error(w, "the leader "+leader+" publishes no HTTP address (its --metrics-listen is not reachable from other replicas); ask it directly", http.StatusServiceUnavailable)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+string(resp.Kvs[0].Value)+r.URL.RequestURI(), nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		req.Header.Set(forwardedHTTPHeader, "1")
		if a := r.Header.Get("Accept"); a != "" {
			req.Header.Set("Accept", a)
		}
		fresp, err := client.Do(req)
		if err != nil {
			http.Error(w, "cannot fetch the worker view from the leader "+leader+": "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer fresp.Body.Close()
		if ct := fresp.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		w.Header().Set("X-Buildfleet-Leader", leader)
		w.WriteHeader(fresp.StatusCode)
		_, _ = io.Copy(w, fresp.Body)
	})
}
