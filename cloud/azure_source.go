package cloud

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// Azure Instance Metadata Service details.
const (
	// DefaultAzureEndpoint is the Azure Instance Metadata Service's address.
	DefaultAzureEndpoint = "http://169.254.169.254"
	// azureEventsPath and azureEventsVersion address the Scheduled Events document.
	azureEventsPath    = "/metadata/scheduledevents"
	azureEventsVersion = "2020-07-01"
	// azureNamePath gives this VM's name, which events list among their Resources.
	azureNamePath = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"
	// azurePreemptNotice is the least notice Azure gives a Spot VM's Preempt event.
	azurePreemptNotice = 30 * time.Second
	// azureRequestTimeout bounds one request (the very first Scheduled Events request of a VM
	// may be slow while Azure enables the feature; the next poll tries again).
	azureRequestTimeout = 10 * time.Second
)

// AzureSourceConfig configures an AzureSource. Zero fields take defaults.
type AzureSourceConfig struct {
	// Endpoint is the metadata service's base URL (default http://169.254.169.254).
	Endpoint string
	// PollInterval is the time between polls while the service answers (default 2 s).
	PollInterval time.Duration
	// MaxBackoff bounds the growing wait between polls while it does not (default 10 s).
	MaxBackoff time.Duration
	// VMName is this VM's name, used to ignore events for other VMs of a scale set or
	// availability set. Empty: read from the metadata service; when that fails, every event
	// counts.
	VMName string
}

// AzureSource polls Azure Scheduled Events. Events of type Preempt and Terminate that concern
// this VM become ScheduledEvent notices whose deadline is the event's NotBefore (when NotBefore
// is empty, because the event has started, the deadline is 30 s after it was seen for Preempt and
// the moment it was seen for Terminate). Other event types (Freeze, Reboot, Redeploy) are logged.
// Completer acknowledges the noticed events so Azure can proceed before NotBefore.
type AzureSource struct {
	cfg   AzureSourceConfig
	http  *http.Client
	clock clock.Clock
	log   zerolog.Logger

	mu sync.Mutex
	// pending holds the ids of noticed events not yet acknowledged, in the order seen.
	pending []string
}

// NewAzureSource returns an AzureSource for cfg.
func NewAzureSource(cfg AzureSourceConfig, clk clock.Clock, log zerolog.Logger) *AzureSource {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultAzureEndpoint
	}
	cfg.Endpoint = strings.TrimRight(cfg.Endpoint, "/")
	cfg.PollInterval = orDefault(cfg.PollInterval, DefaultPollInterval)
	cfg.MaxBackoff = orDefault(cfg.MaxBackoff, DefaultMaxBackoff)
	if cfg.MaxBackoff < cfg.PollInterval {
		cfg.MaxBackoff = cfg.PollInterval
	}
	return &AzureSource{
		cfg:   cfg,
		http:  &http.Client{Transport: metadataTransport("")},
		clock: clk,
		log:   log.With().Str("source", "azure").Logger(),
	}
}

// Name returns "azure".
func (s *AzureSource) Name() string { return "azure" }

// azureEvent is one entry of the Scheduled Events document.
type azureEvent struct {
	EventID      string   `json:"EventId"`
	EventType    string   `json:"EventType"`
	ResourceType string   `json:"ResourceType"`
	Resources    []string `json:"Resources"`
	EventStatus  string   `json:"EventStatus"`
	NotBefore    string   `json:"NotBefore"`
	Description  string   `json:"Description"`
}

// Watch polls Scheduled Events until ctx is done and sends each new notice once. It returns nil
// when ctx ends.
func (s *AzureSource) Watch(ctx context.Context, notices chan<- Notice) error {
	out := newSender(notices)
	defer out.close()
	reach := reachability{log: s.log}
	seen := map[string]bool{}
	lastBad := ""
	vm, vmKnown := s.cfg.VMName, s.cfg.VMName != ""
	for {
		wait := s.cfg.PollInterval
		events, body, err := s.fetch(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			wait = backoff(s.cfg.PollInterval, s.cfg.MaxBackoff, reach.failed(err))
		case events == nil:
			reach.ok()
			if body != lastBad {
				lastBad = body
				s.log.Warn().Str("body", truncate(body, 200)).Msg("Ignoring malformed Scheduled Events document")
			}
		default:
			reach.ok()
			if !vmKnown && len(events) > 0 {
				vm, vmKnown = s.vmName(ctx), true
			}
			for _, e := range events {
				if seen[e.EventID] {
					continue
				}
				seen[e.EventID] = true
				n, ok := s.notice(e, vm)
				if !ok {
					continue
				}
				s.mu.Lock()
				s.pending = append(s.pending, e.EventID)
				s.mu.Unlock()
				s.log.Info().Str("event_id", e.EventID).Str("reason", n.Reason).Time("deadline", n.Deadline).
					Msg("Interruption notice")
				if !out.send(ctx, n) {
					return nil
				}
			}
		}
		if !sleep(ctx, s.clock, wait) {
			return nil
		}
	}
}

// notice turns an event into a notice, if it is one that takes this VM away.
func (s *AzureSource) notice(e azureEvent, vm string) (Notice, bool) {
	log := s.log.With().Str("event_id", e.EventID).Str("event_type", e.EventType).Logger()
	if vm != "" && len(e.Resources) > 0 && !slices.Contains(e.Resources, vm) {
		log.Debug().Strs("resources", e.Resources).Msg("Scheduled event for other VMs")
		return Notice{}, false
	}
	if e.EventType != "Preempt" && e.EventType != "Terminate" {
		log.Info().Str("not_before", e.NotBefore).Msg("Scheduled event that does not end the VM")
		return Notice{}, false
	}
	now := s.clock.Now()
	deadline, err := http.ParseTime(e.NotBefore)
	if err != nil {
		deadline = now
		if e.EventType == "Preempt" {
			deadline = now.Add(azurePreemptNotice)
		}
	}
	return Notice{Source: "azure", Kind: ScheduledEvent,
		Reason: fmt.Sprintf("%s (event %s)", e.EventType, e.EventID), Deadline: deadline}, true
}

// fetch reads the Scheduled Events document. events is nil (with the body) when the document
// cannot be read.
func (s *AzureSource) fetch(ctx context.Context) (events []azureEvent, body string, err error) {
	b, err := s.do(ctx, http.MethodGet, s.eventsURL(), nil)
	if err != nil {
		return nil, "", err
	}
	var doc struct {
		DocumentIncarnation int          `json:"DocumentIncarnation"`
		Events              []azureEvent `json:"Events"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, string(b), nil
	}
	if doc.Events == nil {
		doc.Events = []azureEvent{}
	}
	return doc.Events, "", nil
}

// vmName reads this VM's name, or returns "" when it cannot.
func (s *AzureSource) vmName(ctx context.Context) string {
	b, err := s.do(ctx, http.MethodGet, s.cfg.Endpoint+azureNamePath, nil)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (s *AzureSource) eventsURL() string {
	return s.cfg.Endpoint + azureEventsPath + "?api-version=" + azureEventsVersion
}

// do sends one request with the Metadata header and returns the body of a 200 answer.
func (s *AzureSource) do(ctx context.Context, method, url string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, azureRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Metadata", "true")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, url, res.Status, truncate(strings.TrimSpace(string(b)), 200))
	}
	return b, nil
}

// Completer returns the Completer that acknowledges the events this source has noticed.
func (s *AzureSource) Completer() Completer { return azureCompleter{s} }

// azureCompleter acknowledges noticed Scheduled Events once the worker has drained.
type azureCompleter struct{ s *AzureSource }

// Heartbeat does nothing: Scheduled Events cannot be postponed.
func (azureCompleter) Heartbeat(context.Context) error { return nil }

// Complete acknowledges every noticed event not yet acknowledged with a StartRequests POST.
func (c azureCompleter) Complete(ctx context.Context) error {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		return nil
	}
	type start struct {
		EventID string `json:"EventId"`
	}
	var req struct {
		StartRequests []start `json:"StartRequests"`
	}
	for _, id := range s.pending {
		req.StartRequests = append(req.StartRequests, start{id})
	}
	body, err := json.Marshal(req)
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to encode Scheduled Events acknowledgement: %v", err)
	}
	if _, err := s.do(ctx, http.MethodPost, s.eventsURL(), body); err != nil {
		code := codes.Unavailable
		if ctx.Err() != nil {
			code = status.FromContextError(ctx.Err()).Code()
		}
		return status.Errorf(code, "Failed to acknowledge Scheduled Events %s: %v", strings.Join(s.pending, ","), err)
	}
	s.log.Info().Strs("event_ids", s.pending).Msg("Scheduled events acknowledged")
	s.pending = nil
	return nil
}
