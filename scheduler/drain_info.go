package scheduler

import (
	"time"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// Keys of BotSession.worker.configs (free-form key/values of the Remote Workers API) through
// which a draining bot tells the scheduler about its drain. A bot sets them, alongside
// BotStatus BOT_TERMINATING, for as long as it drains; the scheduler shows them in WorkerInfo,
// logs them and labels buildfleet_scheduler_drain_notices_total with the kind. Bots that do not
// set them (BuildGrid's, buildbox-worker) still drain: the deadline is then unknown.
const (
	// ConfigDrainDeadline is when the bot's machine goes away, as RFC 3339 (e.g.
	// "2026-03-01T12:02:00Z").
	ConfigDrainDeadline = "drain-deadline"
	// ConfigDrainKind is what announced the drain: one of DrainKinds (cloud.Kind values:
	// "spot-interruption", "preemption", "signal", …).
	ConfigDrainKind = "drain-kind"
	// ConfigDrainReason is a human-readable detail of the notice (the IMDS action, the signal).
	ConfigDrainReason = "drain-reason"
)

// DrainKinds are the drain kinds counted under their own label in
// buildfleet_scheduler_drain_notices_total{kind}; any other kind is counted as "other", and a
// bot that gives none as "unspecified". They mirror the kinds of package cloud.
var DrainKinds = []string{
	"spot-interruption", "rebalance-recommendation", "asg-scale-in", "preemption",
	"maintenance", "scheduled-event", "signal",
}

// Kind labels outside DrainKinds.
const (
	drainKindOther       = "other"
	drainKindUnspecified = "unspecified"
)

// maxDrainReason bounds the length of a reason kept from a bot.
const maxDrainReason = 200

// drainInfo is what a bot told of its drain.
type drainInfo struct {
	deadline time.Time
	kind     string
	reason   string
}

// drainInfoOf reads the drain keys of a bot's worker configs.
func drainInfoOf(w *rwpb.Worker) drainInfo {
	var d drainInfo
	for _, c := range w.GetConfigs() {
		switch c.GetKey() {
		case ConfigDrainDeadline:
			if t, err := time.Parse(time.RFC3339Nano, c.GetValue()); err == nil {
				d.deadline = t
			}
		case ConfigDrainKind:
			d.kind = c.GetValue()
			if len(d.kind) > maxDrainReason {
				d.kind = d.kind[:maxDrainReason]
			}
		case ConfigDrainReason:
			d.reason = c.GetValue()
			if len(d.reason) > maxDrainReason {
				d.reason = d.reason[:maxDrainReason]
			}
		}
	}
	return d
}

// label returns the kind as a bounded metric label.
func (d drainInfo) label() string {
	if d.kind == "" {
		return drainKindUnspecified
	}
	for _, k := range DrainKinds {
		if k == d.kind {
			return k
		}
	}
	return drainKindOther
}
