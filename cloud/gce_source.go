package cloud

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/compute/metadata"
	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// GCE metadata paths under /computeMetadata/v1/ that the GCESource subscribes to.
const (
	gcePreemptedPath   = "instance/preempted"
	gceMaintenancePath = "instance/maintenance-event"
	gceTerminateEvent  = "TERMINATE_ON_HOST_MAINTENANCE"
)

// DefaultGCEDeadline is the time a GCE spot or preemptible VM has between the preemption notice
// and its shutdown.
const DefaultGCEDeadline = 30 * time.Second

// GCESourceConfig configures a GCESource. Zero fields take defaults.
type GCESourceConfig struct {
	// Host is the metadata server's "host:port". Empty means the library's choice:
	// GCE_METADATA_HOST, else 169.254.169.254. When set, every request of this source goes to
	// Host whatever GCE_METADATA_HOST says.
	Host string
	// Deadline is the time from a notice to the VM's end (default 30 s).
	Deadline time.Duration
	// RetryInterval is the first wait before subscribing again after the metadata server failed
	// (default 2 s); it doubles up to MaxBackoff.
	RetryInterval time.Duration
	// MaxBackoff bounds that wait (default 10 s).
	MaxBackoff time.Duration
}

// GCESource watches the GCE metadata server through cloud.google.com/go/compute/metadata:
// instance/preempted (a long-poll with wait_for_change) turning TRUE gives a Preemption notice,
// instance/maintenance-event turning TERMINATE_ON_HOST_MAINTENANCE a Maintenance notice, each with
// the deadline Deadline after it was seen. A metadata server that does not answer is logged at
// Debug level and subscribed to again after a backoff on the injected clock.
type GCESource struct {
	cfg    GCESourceConfig
	client *metadata.Client
	clock  clock.Clock
	log    zerolog.Logger
}

// NewGCESource returns a GCESource for cfg.
func NewGCESource(cfg GCESourceConfig, clk clock.Clock, log zerolog.Logger) *GCESource {
	cfg.Deadline = orDefault(cfg.Deadline, DefaultGCEDeadline)
	cfg.RetryInterval = orDefault(cfg.RetryInterval, DefaultPollInterval)
	cfg.MaxBackoff = orDefault(cfg.MaxBackoff, DefaultMaxBackoff)
	return &GCESource{
		cfg:    cfg,
		client: metadata.NewClient(&http.Client{Transport: metadataTransport(cfg.Host)}),
		clock:  clk,
		log:    log.With().Str("source", "gcp").Logger(),
	}
}

// metadataTransport returns an HTTP transport for a link-local metadata server: no proxy, a short
// dial timeout, no overall timeout (wait_for_change requests hang until a change). When host is
// set, every request is sent to it.
func metadataTransport(host string) http.RoundTripper {
	base := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     60 * time.Second,
	}
	if host == "" {
		return base
	}
	return hostRewrite{host: host, base: base}
}

// hostRewrite sends every request to one host.
type hostRewrite struct {
	host string
	base http.RoundTripper
}

// RoundTrip sends req to the configured host.
func (h hostRewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.URL.Host = h.host
	r.Host = h.host
	return h.base.RoundTrip(r)
}

// Name returns "gcp".
func (s *GCESource) Name() string { return "gcp" }

// Watch subscribes to the preemption and maintenance values until ctx is done and sends each new
// notice once. It returns nil when ctx ends.
func (s *GCESource) Watch(ctx context.Context, notices chan<- Notice) error {
	out := newSender(notices)
	defer out.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.subscribe(ctx, out, gcePreemptedPath, func(v string) (Notice, bool) {
			if v != "TRUE" {
				return Notice{}, false
			}
			return Notice{Source: "gcp", Kind: Preemption, Reason: "preempted"}, true
		})
	}()
	go func() {
		defer wg.Done()
		s.subscribe(ctx, out, gceMaintenancePath, func(v string) (Notice, bool) {
			if v != gceTerminateEvent {
				return Notice{}, false
			}
			return Notice{Source: "gcp", Kind: Maintenance, Reason: v}, true
		})
	}()
	// The library sleeps 5 s, without watching ctx, between failed wait_for_change requests:
	// return as soon as ctx ends rather than wait for that; the sender drops anything late.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-ctx.Done():
	case <-done:
	}
	return nil
}

// subscribe follows one metadata value, sending the notice match makes of it each time it turns
// into a noticed value, and subscribes again with a backoff when the server fails.
func (s *GCESource) subscribe(ctx context.Context, out *sender, path string, match func(string) (Notice, bool)) {
	log := s.log.With().Str("path", path).Logger()
	reach := reachability{log: log}
	noticed := false
	for {
		err := s.client.SubscribeWithContext(ctx, path, func(ctx context.Context, v string, ok bool) error {
			reach.ok()
			n, hit := match(strings.TrimSpace(v))
			if !ok || !hit {
				noticed = false
				return nil
			}
			if noticed {
				return nil
			}
			noticed = true
			n.Deadline = s.clock.Now().Add(s.cfg.Deadline)
			log.Info().Str("kind", string(n.Kind)).Str("reason", n.Reason).Time("deadline", n.Deadline).
				Msg("Interruption notice")
			if !out.send(ctx, n) {
				return ctx.Err()
			}
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			// The value was deleted; wait for it to come back.
			err = metadata.NotDefinedError(path)
		}
		wait := backoff(s.cfg.RetryInterval, s.cfg.MaxBackoff, reach.failed(err))
		if !sleep(ctx, s.clock, wait) {
			return
		}
	}
}
