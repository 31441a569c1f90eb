package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/buildfleet/buildfleet/cluster"
	"github.com/buildfleet/buildfleet/internal/clock"
)

// haFlags are the flags that run the scheduler as one of several replicas with an etcd-elected
// leader.
type haFlags struct {
	mode           *string
	endpoints      *string
	advertise      *string
	sessionTTL     *time.Duration
	holdTimeout    *time.Duration
	adoptionWindow *setDuration
}

// setDuration is a duration flag that remembers whether it was given (on the command line or
// in its environment variable).
type setDuration struct {
	d   time.Duration
	set bool
}

// String is empty until the flag is set: its default depends on --ha, which the help text
// explains, so --help must not print one value as "(default ...)".
func (f *setDuration) String() string {
	if f == nil || !f.set {
		return ""
	}
	return f.d.String()
}

// Set parses a duration (time.ParseDuration).
func (f *setDuration) Set(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return err
	}
	if d < 0 {
		return errors.New("must not be negative")
	}
	f.d, f.set = d, true
	return nil
}

func registerHAFlags(fs *flag.FlagSet) *haFlags {
	f := &haFlags{
		mode:        fs.String("ha", "", "high availability: \"etcd\" runs this scheduler as one of several replicas whose leader etcd elects (needs --object-store, --etcd-endpoints, --advertise-address); empty: one process"),
		endpoints:   fs.String("etcd-endpoints", "", "comma-separated etcd client URLs for --ha=etcd, e.g. http://etcd:2379"),
		advertise:   fs.String("advertise-address", "", "host:port at which the other replicas reach this one's --listen port (--ha=etcd)"),
		sessionTTL:  fs.Duration("etcd-session-ttl", cluster.DefaultSessionTTL, "etcd session TTL (whole seconds, at least 2s): a dead leader is replaced about this long after"),
		holdTimeout: fs.Duration("ha-hold-timeout", cluster.DefaultHoldTimeout, "how long a replica holds a call while no leader is known before it fails with UNAVAILABLE"),
	}
	f.adoptionWindow = &setDuration{d: 3 * time.Second}
	fs.Var(f.adoptionWindow, "adoption-window", "after a failover (--ha=etcd; default 3s) or, when given, after a start of a single scheduler, how long it waits for bots to report the leases they hold before it queues actions again (a client asking first then joins the running action instead of making another worker run it)")
	return f
}

// adoptionWindow returns the scheduler's adoption window: --adoption-window with --ha=etcd
// (3 s by default); for one process, none unless the flag was given (a restarted scheduler
// then waits for the workers' reports too, at the cost of that wait after every start).
func (f *haFlags) adoptionWindowFor(haOn bool) time.Duration {
	if haOn || f.adoptionWindow.set {
		return f.adoptionWindow.d
	}
	return 0
}

// enabled reports whether --ha=etcd was given; any other non-empty value is an error.
func (f *haFlags) enabled() (bool, error) {
	switch *f.mode {
	case "":
		if *f.endpoints != "" || *f.advertise != "" {
			return false, errors.New("--etcd-endpoints and --advertise-address need --ha=etcd")
		}
		return false, nil
	case "etcd":
		return true, nil
	default:
		return false, fmt.Errorf("--ha=%s: want \"etcd\" or nothing", *f.mode)
	}
}

// config returns the cluster settings of the flags, checked.
func (f *haFlags) config() (cluster.Config, error) {
	var eps []string
	for _, e := range strings.Split(*f.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	cfg := cluster.Config{
		Endpoints:        eps,
		AdvertiseAddress: *f.advertise,
		SessionTTL:       *f.sessionTTL,
		HoldTimeout:      *f.holdTimeout,
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("--ha=etcd: %w", err)
	}
	return cfg, nil
}

// checkAdvertiseNotPublic refuses an --advertise-address equal to --public-address (the load
// balancer's address, a HOST:PORT or a grpc:// or grpcs:// URL): the other replicas must reach
// this replica itself, and a leader advertising the balancer's address would have every call
// forwarded back through the balancer, to any replica.
func checkAdvertiseNotPublic(advertise, public string) error {
	p := strings.ToLower(strings.TrimSpace(public))
	for _, scheme := range []string{"grpc://", "grpcs://"} {
		p = strings.TrimPrefix(p, scheme)
	}
	p = strings.TrimSuffix(p, "/")
	if p != "" && p == strings.ToLower(strings.TrimSpace(advertise)) {
		return fmt.Errorf("--advertise-address=%s is the --public-address (the load balancer's): it must be this replica's own address, at which the other replicas reach it (e.g. $(hostname -i):8980, or the pod IP)", advertise)
	}
	return nil
}

// startCluster connects to etcd and returns the replica, not yet running, and the etcd client
// to close after it.
func startCluster(cfg cluster.Config, newSched cluster.NewSchedulerFunc, logger zerolog.Logger) (*cluster.Node, *clientv3.Client, error) {
	cli, err := clientv3.New(cluster.EtcdClientConfig(cfg.Endpoints))
	if err != nil {
		return nil, nil, fmt.Errorf("--etcd-endpoints: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "/buildfleet/probe"); err != nil {
		logger.Warn().Err(err).Strs("etcd_endpoints", cfg.Endpoints).Msg("etcd does not answer yet; this replica serves CAS and holds scheduler calls until it does")
	}
	return cluster.New(cfg, cli, newSched, clock.System, logger), cli, nil
}

// advertiseHTTP returns the address at which the other replicas reach this replica's HTTP
// server (--metrics-listen): the host of the advertise address and the port of the listen
// address. It is "" when the HTTP server is off or listens on loopback only while the
// advertise address is not loopback (the others could not reach it).
func advertiseHTTP(advertise, metricsListen string) string {
	if metricsListen == "" {
		return ""
	}
	advHost, _, err := net.SplitHostPort(advertise)
	if err != nil {
		return ""
	}
	host, port, err := net.SplitHostPort(metricsListen)
	if err != nil || port == "0" {
		return ""
	}
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback() || host == "localhost") && !isLoopbackHost(advHost) {
		return ""
	}
	return net.JoinHostPort(advHost, port)
}

func isLoopbackHost(h string) bool {
	ip := net.ParseIP(h)
	return h == "localhost" || ip != nil && ip.IsLoopback()
}
