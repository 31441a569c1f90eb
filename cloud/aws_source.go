package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/smithy-go/logging"
	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// AWS instance metadata paths under /latest/meta-data/ that the AWSSource polls.
const (
	awsSpotPath      = "spot/instance-action"
	awsRebalancePath = "events/recommendations/rebalance"
	awsLifecyclePath = "autoscaling/target-lifecycle-state"
)

// Defaults of AWSSourceConfig.
const (
	// DefaultPollInterval is how often the AWS and Azure sources poll their metadata service.
	// AWS suggests every 5 s; 2 s leaves more of a spot notice's two minutes to the drain.
	DefaultPollInterval = 2 * time.Second
	// DefaultMaxBackoff bounds the wait between attempts while a metadata service does not
	// answer, so one that comes back (or a machine that is not on that cloud) is re-checked
	// at least this often.
	DefaultMaxBackoff = 10 * time.Second
	// DefaultSpotNotice is the deadline used for a spot notice whose time cannot be read, and
	// the planning deadline given to a rebalance recommendation: AWS's two-minute warning.
	DefaultSpotNotice = 2 * time.Minute
	// DefaultScaleInDeadline is how long a worker drains after an Auto Scaling scale-in (target
	// lifecycle state Terminated) unless configured otherwise. With a termination lifecycle hook
	// the instance waits for the hook (whose timeout the ASG completer's heartbeats extend);
	// without one it shuts down within seconds and SIGTERM is what the worker sees. Two minutes
	// matches a spot notice so both are planned alike; set it to the hook's heartbeat timeout (or
	// more, when heartbeats run) to use a longer hook.
	DefaultScaleInDeadline = 2 * time.Minute
	// DefaultLifecycleHookTag is the instance tag read (through instance metadata tags) for the
	// name of the ASG termination lifecycle hook when none is configured.
	DefaultLifecycleHookTag = "buildfleet:lifecycle-hook"
	// awsGroupTag is the tag AWS puts on every instance of an Auto Scaling group.
	awsGroupTag = "aws:autoscaling:groupName"
)

// AWSSourceConfig configures an AWSSource. Zero fields take the defaults above.
type AWSSourceConfig struct {
	// Endpoint is the instance metadata service's base URL, e.g. "http://127.0.0.1:1338".
	// Empty means the SDK's choice: AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254.
	Endpoint string
	// PollInterval is the time between polls while the service answers (default 2 s).
	PollInterval time.Duration
	// MaxBackoff bounds the growing wait between polls while the service does not answer.
	MaxBackoff time.Duration
	// RebalanceDrains makes rebalance recommendations into (soft) notices. When false they are
	// only logged.
	RebalanceDrains bool
	// RebalanceDeadline is added to a rebalance recommendation's noticeTime to give the soft
	// notice a planning deadline (default 2 min). The machine is not known to go away then.
	RebalanceDeadline time.Duration
	// ScaleInDeadline is how long after the scale-in is seen the drain may last.
	ScaleInDeadline time.Duration
	// LifecycleHookTag is the instance tag naming the lifecycle hook (see Identity).
	LifecycleHookTag string
}

// AWSSource watches the EC2 instance metadata service (IMDSv2, through aws-sdk-go-v2's
// feature/ec2/imds, which fetches and refreshes the session token and retries once with a fresh
// token on 401) for spot interruption notices, rebalance recommendations and Auto Scaling
// scale-in. It polls on an injected clock. A service that does not answer means "not on AWS"
// (or IMDS is gone for now): the source logs at Debug level and keeps polling with a backoff up to
// MaxBackoff, so it notices a service that comes back. Each notice is sent once.
type AWSSource struct {
	cfg    AWSSourceConfig
	client *imds.Client
	clock  clock.Clock
	log    zerolog.Logger
}

// NewAWSSource returns an AWSSource polling the metadata service named in cfg.
func NewAWSSource(cfg AWSSourceConfig, clk clock.Clock, log zerolog.Logger) *AWSSource {
	cfg.PollInterval = orDefault(cfg.PollInterval, DefaultPollInterval)
	cfg.MaxBackoff = orDefault(cfg.MaxBackoff, DefaultMaxBackoff)
	if cfg.MaxBackoff < cfg.PollInterval {
		cfg.MaxBackoff = cfg.PollInterval
	}
	cfg.RebalanceDeadline = orDefault(cfg.RebalanceDeadline, DefaultSpotNotice)
	cfg.ScaleInDeadline = orDefault(cfg.ScaleInDeadline, DefaultScaleInDeadline)
	if cfg.LifecycleHookTag == "" {
		cfg.LifecycleHookTag = DefaultLifecycleHookTag
	}
	log = log.With().Str("source", "aws").Logger()
	client := imds.New(imds.Options{
		Endpoint: cfg.Endpoint,
		// Our own retry backoff below, not the client's default of up to 1 s between attempts.
		DisableDefaultMaxBackoff: true,
		// IMDS is link-local: a few quick retries, no client-side retry quota (which would
		// otherwise drain while IMDS is away and then refuse retries after it returns).
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 3
			o.MaxBackoff = 100 * time.Millisecond
			o.Backoff = retry.NewExponentialJitterBackoff(100 * time.Millisecond)
			o.RateLimiter = ratelimit.None
		}),
		Logger: logging.LoggerFunc(func(_ logging.Classification, format string, v ...interface{}) {
			log.Debug().Msgf("imds: "+format, v...)
		}),
	})
	return &AWSSource{cfg: cfg, client: client, clock: clk, log: log}
}

// Name returns "aws".
func (s *AWSSource) Name() string { return "aws" }

// Watch polls the metadata service until ctx is done and sends each new notice once. It
// returns nil when ctx ends.
func (s *AWSSource) Watch(ctx context.Context, notices chan<- Notice) error {
	out := newSender(notices)
	defer out.close()
	w := awsWatch{AWSSource: s, out: out, seen: map[string]bool{}, malformed: map[string]string{},
		spotSent: map[string]time.Time{}, reach: reachability{log: s.log}}
	for {
		wait := s.cfg.PollInterval
		if err := w.poll(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait = backoff(s.cfg.PollInterval, s.cfg.MaxBackoff, w.reach.failed(err))
		} else {
			w.reach.ok()
		}
		if !sleep(ctx, s.clock, wait) {
			return nil
		}
	}
}

// awsWatch is the state of one Watch call.
type awsWatch struct {
	*AWSSource
	out *sender
	// seen holds the keys of the notices already sent.
	seen map[string]bool
	// malformed holds the last unreadable body per path, so each is logged once.
	malformed map[string]string
	// spotSent is the deadline of the last spot notice sent per action.
	spotSent map[string]time.Time
	reach    reachability
}

// poll reads the three notice paths once. It returns an error only when the service did not
// answer at all.
func (w *awsWatch) poll(ctx context.Context) error {
	answered := 0
	var firstErr error
	for _, path := range []string{awsSpotPath, awsRebalancePath, awsLifecyclePath} {
		body, found, err := w.get(ctx, path)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			var status interface{ HTTPStatusCode() int }
			if !errors.As(err, &status) {
				break // Not answered at all: the service is away, leave the other paths.
			}
			answered++
			w.log.Debug().Err(err).Str("path", path).Msg("Instance metadata error")
			continue
		}
		answered++
		if !found {
			continue
		}
		var n Notice
		var key string
		var ok bool
		switch path {
		case awsSpotPath:
			n, key, ok = w.spot(path, body)
		case awsRebalancePath:
			n, key, ok = w.rebalance(path, body)
		case awsLifecyclePath:
			n, key, ok = w.lifecycle(body)
		}
		if !ok || w.seen[key] {
			continue
		}
		w.seen[key] = true
		w.log.Info().Str("kind", string(n.Kind)).Str("reason", n.Reason).Time("deadline", n.Deadline).
			Bool("soft", n.Soft).Msg("Interruption notice")
		if !w.out.send(ctx, n) {
			return ctx.Err()
		}
	}
	if answered == 0 {
		return firstErr
	}
	return nil
}

// get reads one metadata path. found is false when the service answered 404 (no notice).
func (w *awsWatch) get(ctx context.Context, path string) (body string, found bool, err error) {
	out, err := w.client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		var status interface{ HTTPStatusCode() int }
		if errors.As(err, &status) && status.HTTPStatusCode() == http.StatusNotFound {
			return "", false, nil
		}
		return "", false, fmt.Errorf("failed to read instance metadata %s: %w", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	if err != nil {
		return "", false, fmt.Errorf("failed to read instance metadata %s: %w", path, err)
	}
	return string(b), true, nil
}

// badBody logs an unreadable body once per distinct content.
func (w *awsWatch) badBody(path, body string, err error) {
	if w.malformed[path] == body {
		return
	}
	w.malformed[path] = body
	w.log.Warn().Err(err).Str("path", path).Str("body", truncate(body, 200)).
		Msg("Ignoring malformed instance metadata")
}

// spot turns a spot/instance-action document into a SpotInterruption notice.
func (w *awsWatch) spot(path, body string) (Notice, string, bool) {
	var doc struct {
		Action string `json:"action"`
		Time   string `json:"time"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		w.badBody(path, body, err)
		return Notice{}, "", false
	}
	if doc.Action == "" && doc.Time == "" {
		w.badBody(path, body, errors.New("neither action nor time is set"))
		return Notice{}, "", false
	}
	deadline, err := time.Parse(time.RFC3339, doc.Time)
	if err != nil {
		// A notice with an unreadable time is still a notice: assume the usual two minutes.
		deadline = w.clock.Now().Add(DefaultSpotNotice)
		w.log.Warn().Err(err).Str("time", doc.Time).Msg("Spot notice time unreadable; assuming two minutes")
	}
	action := doc.Action
	if action == "" {
		action = "unknown"
	}
	// The notice stays in IMDS until the instance goes. Some IMDS implementations (the metadata
	// mock among them) stamp its time anew on every read, so a notice of the same action is sent
	// again only when it brings the deadline forward.
	if prev, ok := w.spotSent[action]; ok && !deadline.Before(prev) {
		return Notice{}, "", false
	}
	w.spotSent[action] = deadline
	n := Notice{Source: "aws", Kind: SpotInterruption, Reason: action, Deadline: deadline}
	return n, "spot|" + doc.Action + "|" + doc.Time, true
}

// rebalance turns a rebalance recommendation into a soft Rebalance notice, or only logs it when
// rebalance recommendations do not drain.
func (w *awsWatch) rebalance(path, body string) (Notice, string, bool) {
	var doc struct {
		NoticeTime string `json:"noticeTime"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		w.badBody(path, body, err)
		return Notice{}, "", false
	}
	// One recommendation per instance life: some IMDS implementations (the metadata mock among
	// them) stamp noticeTime anew on every read, so it is not part of the key.
	key := "rebalance"
	if !w.cfg.RebalanceDrains {
		if !w.seen[key] {
			w.seen[key] = true
			w.log.Info().Str("notice_time", doc.NoticeTime).
				Msg("Rebalance recommendation received; not draining (rebalance notices do not drain)")
		}
		return Notice{}, "", false
	}
	at, err := time.Parse(time.RFC3339, doc.NoticeTime)
	if err != nil {
		at = w.clock.Now()
	}
	n := Notice{Source: "aws", Kind: Rebalance, Reason: "rebalance recommendation",
		Deadline: at.Add(w.cfg.RebalanceDeadline), Soft: true}
	return n, key, true
}

// lifecycle turns a target lifecycle state of Terminated into a ScaleIn notice.
func (w *awsWatch) lifecycle(body string) (Notice, string, bool) {
	state := strings.TrimSpace(body)
	if state != "Terminated" {
		return Notice{}, "", false
	}
	n := Notice{Source: "aws", Kind: ScaleIn, Reason: "target lifecycle state Terminated",
		Deadline: w.clock.Now().Add(w.cfg.ScaleInDeadline)}
	return n, "scale-in", true
}

// AWSIdentity names this instance and, when known, its Auto Scaling group and termination
// lifecycle hook.
type AWSIdentity struct {
	// InstanceID is the EC2 instance id.
	InstanceID string
	// Region is the instance's region, empty when unknown.
	Region string
	// AutoScalingGroup is the value of the instance's aws:autoscaling:groupName tag, empty when
	// unknown (instance metadata tags disabled, or not in a group).
	AutoScalingGroup string
	// LifecycleHook is the value of the tag named by AWSSourceConfig.LifecycleHookTag, if any.
	LifecycleHook string
}

// Identity reads the instance id (required), region and tags from the metadata service. Tags
// are visible only when the instance allows tags in instance metadata.
func (s *AWSSource) Identity(ctx context.Context) (AWSIdentity, error) {
	w := awsWatch{AWSSource: s}
	var id AWSIdentity
	v, found, err := w.get(ctx, "instance-id")
	if err != nil {
		return id, err
	}
	if !found || strings.TrimSpace(v) == "" {
		return id, errors.New("instance metadata has no instance-id")
	}
	id.InstanceID = strings.TrimSpace(v)
	if r, err := s.client.GetRegion(ctx, &imds.GetRegionInput{}); err == nil {
		id.Region = r.Region
	}
	if v, found, err := w.get(ctx, "tags/instance/"+awsGroupTag); err == nil && found {
		id.AutoScalingGroup = strings.TrimSpace(v)
	}
	if v, found, err := w.get(ctx, "tags/instance/"+s.cfg.LifecycleHookTag); err == nil && found {
		id.LifecycleHook = strings.TrimSpace(v)
	}
	return id, nil
}

// truncate shortens s to at most n bytes for logging.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
