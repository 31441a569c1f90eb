package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/scheduler"
)

// NewSchedulerFunc makes the scheduler of one term a replica leads. fence reports, when asked,
// whether the term is still certainly valid (nil) or may have ended (an error: the etcd lease
// renewal was not confirmed in time, or the session is gone); pass it as scheduler.Config.Fence
// so that the scheduler checks it synchronously before it hands out a lease or accepts a report.
type NewSchedulerFunc func(fence func() error) *scheduler.Scheduler

// Node is one scheduler replica: it campaigns for leadership, runs a scheduler while it leads,
// and serves the scheduler's services by dispatching each call to the current leader. Create it
// with New, register it on the gRPC server with Register and run it with Run.
type Node struct {
	cfg          Config
	cli          *clientv3.Client
	newScheduler NewSchedulerFunc
	clk          clock.Clock
	log          zerolog.Logger
	dialOpts     []grpc.DialOption
	// id is this process's random node id: the advertise address reaches this replica when
	// the replica answering there knows it.
	id string

	// bg counts the goroutines Run waits for (lease revocations) before it returns.
	bg sync.WaitGroup

	mu sync.Mutex
	// leader is the advertise address of the leader as etcd last told it ("" while none).
	leader string
	// local is the scheduler of the term this replica leads, nil while it does not lead.
	local *localServices
	// changed is closed and replaced whenever leader or local changes.
	changed chan struct{}
	conns   map[string]*grpc.ClientConn
	// attempts are the calls being forwarded to a leader now: once the leader changes (or
	// this replica starts leading) those sent to another address are ended at once and
	// resumed on the next leader, however the old one behaves (it may be frozen, its TCP
	// connection up and nothing answering).
	attempts map[*forwardedAttempt]struct{}
	// terms counts the terms this replica has led.
	terms int
	// selfChecked is set once the advertise address was checked; selfErr is the outcome of
	// the last check (nil: it reaches this replica).
	selfChecked bool
	selfErr     error
	// session is true while the replica holds an etcd session.
	session bool
	// probe is what the last call to the leader's health service found.
	probe leaderProbe
	// warned is when each rate-limited warning was last logged.
	warned map[string]time.Time
}

// leaderProbe is the outcome of the follower's checks that the leader answers.
type leaderProbe struct {
	addr string
	err  error
	// leads is whether addr answered that it leads (SERVING on LeaderHealthService).
	leads bool
	// failingSince is when checks of addr started failing (zero while they succeed).
	failingSince time.Time
}

// New returns a replica of the etcd cluster cli connects to. newScheduler makes the scheduler
// of each term the replica leads (a new, empty one each time); the replica closes it when the
// term ends. dialOpts are added to the options of connections to the leader (default: none
// beyond plaintext).
func New(cfg Config, cli *clientv3.Client, newScheduler NewSchedulerFunc, clk clock.Clock, logger zerolog.Logger, dialOpts ...grpc.DialOption) *Node {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	return &Node{
		cfg:          cfg.withDefaults(),
		cli:          cli,
		newScheduler: newScheduler,
		clk:          clk,
		log:          logger.With().Str("component", "cluster").Str("advertise", cfg.AdvertiseAddress).Str("node_id", id).Logger(),
		dialOpts:     dialOpts,
		id:           id,
		changed:      make(chan struct{}),
		conns:        map[string]*grpc.ClientConn{},
		attempts:     map[*forwardedAttempt]struct{}{},
		warned:       map[string]time.Time{},
	}
}

// ID returns the replica's random node id (new in every process).
func (n *Node) ID() string { return n.id }

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
	wg.Add(2)
	go func() {
		defer wg.Done()
		n.watchLeader(ctx)
	}()
	go func() {
		defer wg.Done()
		n.probeLeader(ctx)
	}()
	for ctx.Err() == nil {
		if err := n.term(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn().Err(err).Msg("Election attempt failed; retrying")
			n.pause(ctx, n.cfg.RetryInterval*5)
		}
	}
	wg.Wait()
	n.bg.Wait()
	n.mu.Lock()
	for _, c := range n.conns {
		c.Close()
	}
	n.conns = map[string]*grpc.ClientConn{}
	n.mu.Unlock()
	return nil
}

// errAdvertise is returned by term when the advertise address does not reach this replica.
var errAdvertise = errors.New("advertise address does not reach this replica")

// term checks the advertise address, opens an etcd session, campaigns until elected, checks
// the advertise address again, and leads until the session is lost, the fence trips or ctx is
// done. A replica whose advertise address does not reach itself never campaigns (the others
// would forward to an address that does not answer): it serves as a follower and checks again
// every session TTL.
func (n *Node) term(ctx context.Context) error {
	if n.checkSelf(ctx) != nil {
		n.pause(ctx, n.cfg.SessionTTL)
		return nil
	}
	ttl := int(n.cfg.SessionTTL / time.Second)
	sess, err := concurrency.NewSession(n.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	n.setSession(true)
	// The session ends with the term: its lease is revoked, which deletes the election key at
	// once (the next leader need not wait for the TTL). If etcd does not answer now, the
	// revocation is retried until it does: a lease etcd restores after a restart would
	// otherwise block the election for a TTL more.
	defer func() {
		n.setSession(false)
		sess.Orphan()
		n.revoke(ctx, sess.Lease())
	}()
	campaign, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-campaign.Done():
		}
	}()
	if n.cfg.AdvertiseHTTPAddress != "" {
		if _, err := n.cli.Put(campaign, n.httpKey(n.cfg.AdvertiseAddress), n.cfg.AdvertiseHTTPAddress, clientv3.WithLease(sess.Lease())); err != nil {
			return err
		}
	}
	el := concurrency.NewElection(sess, n.cfg.Prefix+"/")
	// Campaign, once its context ends, deletes its key with the client's own context, which
	// waits for etcd however long it is away; the term does not wait for it (the revocation
	// above deletes the key too).
	won := make(chan error, 1)
	go func() { won <- el.Campaign(campaign, n.cfg.AdvertiseAddress) }()
	select {
	case err := <-won:
		if err != nil {
			return err
		}
	case <-campaign.Done():
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("etcd session lost while campaigning")
	}
	// Elected. A replica that does not reach itself at its advertise address must not lead:
	// the others would forward every call to an address that does not answer.
	if err := n.checkSelf(campaign); err != nil {
		n.log.Error().Msg("Elected, but the advertise address does not reach this replica: stepping down")
		return nil
	}
	// The term's validity starts from a renewal sent now.
	validUntil, err := n.renew(campaign, sess.Lease())
	if err != nil {
		return err
	}
	f := &termFence{clk: n.clk, validUntil: validUntil, sessDone: sess.Done()}
	sched := n.newScheduler(f.check)
	n.setLocal(sched)
	n.log.Info().Msg("Elected leader: scheduler serving")
	lost := n.fence(campaign, sess.Lease(), f)
	astray := n.recheckSelf(campaign)
	select {
	case <-sess.Done():
		n.log.Warn().Msg("etcd session lost: stepping down")
	case <-lost:
		n.log.Warn().Msg("etcd lease not renewed in time: stepping down")
	case <-astray:
		n.log.Error().Msg("The advertise address no longer reaches this replica: stepping down")
	case <-ctx.Done():
		n.log.Info().Msg("Shutting down: resigning leadership")
	}
	n.setLocal(nil)
	sched.Close()
	return nil
}

// selfRecheckStrikes is how many rounds of the leader's self-check in a row may go unanswered
// before it steps down: one round lost to a busy machine or a dropped packet costs no failover.
// A round answered by another server steps down at once.
const selfRecheckStrikes = 2

// recheckSelf checks the advertise address every session TTL while ctx lasts (the term) and
// returns a channel closed once the address certainly leads elsewhere (another server answered)
// or selfRecheckStrikes rounds in a row went unanswered: a leader whose address stops reaching
// it (a load balancer's address, a moved IP) would have every forwarded call sent elsewhere.
func (n *Node) recheckSelf(ctx context.Context) <-chan struct{} {
	astray := make(chan struct{})
	go func() {
		strikes := 0
		for {
			n.pause(ctx, n.cfg.SessionTTL)
			if ctx.Err() != nil {
				return
			}
			err := n.checkSelf(ctx)
			switch {
			case ctx.Err() != nil:
				return
			case err == nil:
				strikes = 0
				continue
			case errors.Is(err, errAnsweredElsewhere):
				strikes = selfRecheckStrikes
			default:
				strikes++
			}
			if strikes >= selfRecheckStrikes {
				close(astray)
				return
			}
			n.log.Warn().Str("reason", err.Error()).Int("strikes", strikes).
				Msgf("Leader's self-check of --advertise-address went unanswered; stepping down after %d in a row", selfRecheckStrikes)
		}
	}()
	return astray
}

// revoke revokes lease id. If etcd does not answer within a third of the TTL and ctx is not
// done, it keeps trying in the background (Run waits for it) until etcd answers, the lease is
// gone, or ctx is done.
func (n *Node) revoke(ctx context.Context, id clientv3.LeaseID) {
	attempt := func() bool {
		rctx, cancel := context.WithTimeout(context.Background(), n.cfg.SessionTTL/3)
		defer cancel()
		_, err := n.cli.Revoke(rctx, id)
		return err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound)
	}
	if attempt() || ctx.Err() != nil {
		return
	}
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		for ctx.Err() == nil && !attempt() {
			n.pause(ctx, n.cfg.RetryInterval)
		}
	}()
}

// termFence is the validity of one term, checked synchronously by the term's scheduler.
type termFence struct {
	clk      clock.Clock
	sessDone <-chan struct{}

	mu         sync.Mutex
	validUntil time.Time
}

// check returns nil while the term is certainly valid: the session is alive and the clock has
// not reached the validity a confirmed renewal gave.
func (f *termFence) check() error {
	select {
	case <-f.sessDone:
		return errors.New("etcd session lost")
	default:
	}
	f.mu.Lock()
	v := f.validUntil
	f.mu.Unlock()
	if !f.clk.Now().Before(v) {
		return fmt.Errorf("etcd lease renewal not confirmed by %s", v.Format(time.RFC3339Nano))
	}
	return nil
}

func (f *termFence) until() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.validUntil
}

func (f *termFence) extend(v time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v.After(f.validUntil) {
		f.validUntil = v
	}
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

// fence renews lease id every TTL/4, extending f, and returns a channel closed once f's
// validity passes without a confirmed renewal (or ctx is done).
func (n *Node) fence(ctx context.Context, id clientv3.LeaseID, f *termFence) <-chan struct{} {
	lost := make(chan struct{})
	go func() {
		defer close(lost)
		every := n.cfg.SessionTTL / 4
		for {
			wait := min(every, f.until().Sub(n.clk.Now()))
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
			if f.check() != nil {
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
			dl, dch := n.clk.NewTimer(max(f.until().Sub(n.clk.Now()), 0))
			select {
			case v, ok := <-renewed:
				if ok {
					f.extend(v)
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
	old := n.leader
	n.leader = addr
	n.moveAttemptsLocked()
	// The connection to the old leader goes too: a frozen leader keeps its TCP connection up,
	// and a new connection is made if it is elected again.
	if c := n.conns[old]; c != nil && old != "" && old != n.cfg.AdvertiseAddress {
		delete(n.conns, old)
		go c.Close()
	}
	n.notifyLocked()
}

// forwardedAttempt is one attempt of a call forwarded to the leader at addr.
type forwardedAttempt struct {
	addr   string
	cancel context.CancelFunc
	// moved is set when the attempt was ended because the leader changed.
	moved bool
}

// trackAttempt returns ctx for one attempt of a call forwarded to addr, ended as soon as addr
// stops being the leader, and the attempt to pass to untrackAttempt once it is over.
func (n *Node) trackAttempt(ctx context.Context, addr string) (context.Context, *forwardedAttempt) {
	actx, cancel := context.WithCancel(ctx)
	a := &forwardedAttempt{addr: addr, cancel: cancel}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.local != nil || n.leader != addr {
		a.moved = true
		cancel()
		return actx, a
	}
	n.attempts[a] = struct{}{}
	return actx, a
}

// untrackAttempt forgets a and reports whether it was ended because the leader changed.
func (n *Node) untrackAttempt(a *forwardedAttempt) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.attempts, a)
	a.cancel()
	return a.moved
}

// moveAttemptsLocked ends every forwarded attempt whose address is not the leader's now (all
// of them while this replica leads).
func (n *Node) moveAttemptsLocked() {
	for a := range n.attempts {
		if n.local != nil || a.addr != n.leader {
			a.moved = true
			a.cancel()
			delete(n.attempts, a)
		}
	}
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
		n.moveAttemptsLocked()
	}
	n.notifyLocked()
}

// setSession records whether the replica holds an etcd session. Losing it forgets this
// replica's own address as the leader's: the key etcd last showed is stale (etcd deletes it
// with the session's lease, or already did while unreachable), and /readyz must not name a
// replica that does not lead.
func (n *Node) setSession(up bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.session = up
	if !up && n.leader == n.cfg.AdvertiseAddress && n.leader != "" {
		n.leader = ""
		n.notifyLocked()
	}
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
		if leader != "" && !n.isSelfLocked(leader) && leader != avoid {
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

// isSelfLocked reports whether addr is this replica's own advertise address (a leader this
// replica is about to be, or just stopped being). An advertise address that was found to reach
// another replica is not this one's: calls are forwarded there.
func (n *Node) isSelfLocked(addr string) bool {
	return addr == n.cfg.AdvertiseAddress && (!n.selfChecked || n.selfErr == nil)
}

// connLocked returns the (shared, lazily connecting) client connection to addr.
func (n *Node) connLocked(addr string) (*grpc.ClientConn, error) {
	if c := n.conns[addr]; c != nil {
		return c, nil
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A leader frozen for good (its lease expired, but no new leader seen yet, e.g. with
		// etcd away too) is noticed by the pings: the connection closes and held calls fail
		// over. gRPC raises Time to at least 10 s; the scheduler server permits pings that
		// often (cmd/scheduler: EnforcementPolicy MinTime 10 s, PermitWithoutStream).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: n.cfg.SessionTTL, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
	}, n.dialOpts...)
	c, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	n.conns[addr] = c
	return c, nil
}

// warnLimited returns a warning event of kind to log, or nil when one was logged less than
// warnEvery ago.
func (n *Node) warnLimited(kind string) *zerolog.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.clk.Now()
	if last, ok := n.warned[kind]; ok && now.Sub(last) < warnEvery {
		return nil
	}
	n.warned[kind] = now
	return n.log.Warn()
}

// keepaliveTime is how often a connection to the leader is pinged when idle (gRPC's least).
const keepaliveTime = 10 * time.Second

// warnEvery is the least time between two rate-limited warnings of the same kind.
const warnEvery = 5 * time.Second
