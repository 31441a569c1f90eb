package cluster

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/scheduler"
)

// Node is one scheduler replica: it campaigns for leadership, runs a scheduler while it leads,
// and serves the scheduler's services by dispatching each call to the current leader. Create it
// with New, register it on the gRPC server with Register and run it with Run.
type Node struct {
	cfg          Config
	cli          *clientv3.Client
	newScheduler func() *scheduler.Scheduler
	clk          clock.Clock
	log          zerolog.Logger
	dialOpts     []grpc.DialOption

	mu sync.Mutex
	// leader is the advertise address of the leader as etcd last told it ("" while none).
	leader string
	// local is the scheduler of the term this replica leads, nil while it does not lead.
	local *localServices
	// changed is closed and replaced whenever leader or local changes.
	changed chan struct{}
	conns   map[string]*grpc.ClientConn
	// terms counts the terms this replica has led.
	terms int
}

// New returns a replica of the etcd cluster cli connects to. newScheduler makes the scheduler
// of each term the replica leads (a new, empty one each time); the replica closes it when the
// term ends. dialOpts are added to the options of connections to the leader (default: none
// beyond plaintext).
func New(cfg Config, cli *clientv3.Client, newScheduler func() *scheduler.Scheduler, clk clock.Clock, logger zerolog.Logger, dialOpts ...grpc.DialOption) *Node {
	return &Node{
		cfg:          cfg.withDefaults(),
		cli:          cli,
		newScheduler: newScheduler,
		clk:          clk,
		log:          logger.With().Str("component", "cluster").Str("advertise", cfg.AdvertiseAddress).Logger(),
		dialOpts:     dialOpts,
		changed:      make(chan struct{}),
		conns:        map[string]*grpc.ClientConn{},
	}
}

// Leader returns the leader's advertise address as last seen in etcd ("" if none) and whether
// this replica leads now (runs the scheduler).
func (n *Node) Leader() (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.leader, n.local != nil
}

// Terms returns how many terms this replica has led so far.
func (n *Node) Terms() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.terms
}

// Run campaigns and follows the election until ctx is done; then it resigns (a leader hands over
// at once instead of after the session TTL), closes the scheduler and returns nil.
func (n *Node) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.watchLeader(ctx)
	}()
	for ctx.Err() == nil {
		if err := n.term(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn().Err(err).Msg("Election attempt failed; retrying")
			n.pause(ctx, n.cfg.RetryInterval*5)
		}
	}
	wg.Wait()
	n.mu.Lock()
	for _, c := range n.conns {
		c.Close()
	}
	n.conns = map[string]*grpc.ClientConn{}
	n.mu.Unlock()
	return nil
}

// term opens an etcd session, campaigns until elected, and leads until the session is lost, the
// fence trips or ctx is done.
func (n *Node) term(ctx context.Context) error {
	ttl := int(n.cfg.SessionTTL / time.Second)
	sess, err := concurrency.NewSession(n.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close()
	campaign, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-campaign.Done():
		}
	}()
	el := concurrency.NewElection(sess, n.cfg.Prefix+"/")
	if err := el.Campaign(campaign, n.cfg.AdvertiseAddress); err != nil {
		return err
	}
	// Elected. The term's validity starts from a renewal sent now.
	validUntil, err := n.renew(campaign, sess.Lease())
	if err != nil {
		return err
	}
	sched := n.newScheduler()
	n.setLocal(sched)
	n.log.Info().Msg("Elected leader: scheduler serving")
	lost := n.fence(campaign, sess.Lease(), validUntil)
	select {
	case <-sess.Done():
		n.log.Warn().Msg("etcd session lost: stepping down")
	case <-lost:
		n.log.Warn().Msg("etcd lease not renewed in time: stepping down")
	case <-ctx.Done():
		n.log.Info().Msg("Shutting down: resigning leadership")
	}
	n.setLocal(nil)
	sched.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), n.cfg.SessionTTL)
	defer rcancel()
	if err := el.Resign(rctx); err != nil && ctx.Err() != nil {
		n.log.Warn().Err(err).Msg("Resign failed; the next leader takes over after the session TTL")
	}
	return nil
}

// renew renews lease id once and returns until when the leadership it backs is certainly
// valid: etcd expires the lease no earlier than TTL after it received the renewal, which is
// after it was sent; a margin covers clock rate differences.
func (n *Node) renew(ctx context.Context, id clientv3.LeaseID) (time.Time, error) {
	sent := n.clk.Now()
	rctx, cancel := context.WithTimeout(ctx, n.cfg.SessionTTL/3)
	defer cancel()
	resp, err := n.cli.KeepAliveOnce(rctx, id)
	if err != nil {
		return time.Time{}, err
	}
	ttl := min(time.Duration(resp.TTL)*time.Second, n.cfg.SessionTTL)
	return sent.Add(ttl - n.fenceMargin()), nil
}

// fenceMargin is how long before the lease could expire the leader stops.
func (n *Node) fenceMargin() time.Duration { return n.cfg.SessionTTL / 10 }

// fence renews lease id every TTL/4 and returns a channel closed once validUntil passes without
// a confirmed renewal (or ctx is done).
func (n *Node) fence(ctx context.Context, id clientv3.LeaseID, validUntil time.Time) <-chan struct{} {
	lost := make(chan struct{})
	go func() {
		defer close(lost)
		every := n.cfg.SessionTTL / 4
		for {
			wait := min(every, validUntil.Sub(n.clk.Now()))
			if wait <= 0 {
				return
			}
			t, ch := n.clk.NewTimer(wait)
			select {
			case <-ch:
			case <-ctx.Done():
				t.Stop()
				return
			}
			if !n.clk.Now().Before(validUntil) {
				return
			}
			renewed := make(chan time.Time, 1)
			go func() {
				if v, err := n.renew(ctx, id); err == nil {
					renewed <- v
				} else {
					close(renewed)
				}
			}()
			dl, dch := n.clk.NewTimer(max(validUntil.Sub(n.clk.Now()), 0))
			select {
			case v, ok := <-renewed:
				if ok && v.After(validUntil) {
					validUntil = v
				}
			case <-dch:
				return
			case <-ctx.Done():
				dl.Stop()
				return
			}
			dl.Stop()
		}
	}()
	return lost
}

// watchLeader keeps n.leader equal to the election's leader in etcd until ctx is done.
func (n *Node) watchLeader(ctx context.Context) {
	pfx := n.cfg.Prefix + "/"
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, n.cfg.SessionTTL)
		resp, err := n.cli.Get(gctx, pfx, clientv3.WithFirstCreate()...)
		cancel()
		if err != nil {
			n.pause(ctx, n.cfg.RetryInterval)
			continue
		}
		leader := ""
		if len(resp.Kvs) > 0 {
			leader = string(resp.Kvs[0].Value)
		}
		n.setLeader(leader)
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := n.cli.Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		for wr := range wch {
			if wr.Err() != nil || len(wr.Events) > 0 {
				break
			}
		}
		wcancel()
	}
}

// pause waits d on the clock, or until ctx is done.
func (n *Node) pause(ctx context.Context, d time.Duration) {
	t, ch := n.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// setLeader records the leader seen in etcd.
func (n *Node) setLeader(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.leader == addr {
		return
	}
	n.log.Info().Str("leader", addr).Msg("Leader changed")
	n.leader = addr
	n.notifyLocked()
}

// setLocal starts (sched != nil) or ends (nil) this replica's term.
func (n *Node) setLocal(sched *scheduler.Scheduler) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if sched == nil {
		n.local = nil
	} else {
		n.local = newLocalServices(sched)
		n.terms++
	}
	n.notifyLocked()
}

func (n *Node) notifyLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// errNoLeader is returned by await when the hold time passes with no leader to call.
var errNoLeader = errors.New("no scheduler leader")

// await returns where to send a call now: the local scheduler while this replica leads, else a
// connection to the leader. While there is neither, it waits for a change until deadline. A
// leader equal to avoid (it just failed) is skipped until the view changes or for ten retry
// intervals, after which it is tried again (it may have been elected again meanwhile).
func (n *Node) await(ctx context.Context, deadline time.Time, avoid string) (*target, error) {
	var (
		t, at  clock.Timer
		ch, ac <-chan time.Time
	)
	defer func() {
		if t != nil {
			t.Stop()
		}
		if at != nil {
			at.Stop()
		}
	}()
	if avoid != "" {
		at, ac = n.clk.NewTimer(10 * n.cfg.RetryInterval)
	}
	for {
		n.mu.Lock()
		local, leader, changed := n.local, n.leader, n.changed
		if local != nil {
			n.mu.Unlock()
			return &target{local: local}, nil
		}
		if leader != "" && leader != n.cfg.AdvertiseAddress && leader != avoid {
			conn, err := n.connLocked(leader)
			n.mu.Unlock()
			if err != nil {
				return nil, err
			}
			return &target{addr: leader, conn: conn}, nil
		}
		n.mu.Unlock()
		if t == nil {
			wait := deadline.Sub(n.clk.Now())
			if wait <= 0 {
				return nil, errNoLeader
			}
			t, ch = n.clk.NewTimer(wait)
		}
		select {
		case <-changed:
			avoid = "" // a new view: the failed leader may be the right one again
		case <-ac:
			avoid = ""
		case <-ch:
			return nil, errNoLeader
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// connLocked returns the (shared, lazily connecting) client connection to addr.
func (n *Node) connLocked(addr string) (*grpc.ClientConn, error) {
	if c := n.conns[addr]; c != nil {
		return c, nil
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
	}, n.dialOpts...)
	c, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	n.conns[addr] = c
	return c, nil
}

// WorkersHandler serves the leader's worker view (scheduler.WorkersHandler); a replica that does
// not lead answers 503 naming the leader.
func (n *Node) WorkersHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		local, leader := n.local, n.leader
		n.mu.Unlock()
		if local == nil {
			http.Error(w, "this scheduler replica does not lead; the leader is "+leader, http.StatusServiceUnavailable)
			return
		}
		local.sched.WorkersHandler().ServeHTTP(w, r)
	})
}
