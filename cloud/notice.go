// Package cloud turns the ways a machine learns it is about to be taken away (AWS spot
// interruption and rebalance notices, Auto Scaling scale-in, GCE preemption and maintenance,
// Azure Scheduled Events, process signals) into one kind of Notice that drives the worker's drain.
package cloud

import (
	"context"
	"time"
)

// Kind says what a Notice announces.
type Kind string

// The kinds of notice.
const (
	// SpotInterruption is an AWS spot instance-action (terminate, stop or hibernate).
	SpotInterruption Kind = "spot-interruption"
	// Rebalance is an AWS rebalance recommendation: a soft notice with no fixed deadline.
	Rebalance Kind = "rebalance-recommendation"
	// ScaleIn is an Auto Scaling target lifecycle state of Terminated.
	ScaleIn Kind = "asg-scale-in"
	// Preemption is a GCE spot or preemptible VM being preempted.
	Preemption Kind = "preemption"
	// Maintenance is a GCE host maintenance event that terminates the VM.
	Maintenance Kind = "maintenance"
	// ScheduledEvent is an Azure Scheduled Event (Preempt or Terminate).
	ScheduledEvent Kind = "scheduled-event"
	// Signal is SIGTERM or SIGINT sent to the worker process.
	Signal Kind = "signal"
)

// Notice announces that the machine will be taken away at Deadline.
type Notice struct {
	// Source names the watcher that produced the notice ("aws", "gcp", "azure", "signal").
	Source string
	// Kind says what is announced.
	Kind Kind
	// Reason is a human-readable detail (the IMDS action, the Azure event type, the signal).
	Reason string
	// Deadline is when the machine goes away.
	Deadline time.Time
	// Soft is true for advisory notices (rebalance recommendations) that drain only when the
	// operator asks for it.
	Soft bool
	// Immediate is true when the worker must stop at once rather than plan against a deadline
	// (a second SIGTERM or SIGINT): stop running actions, hand their leases back and exit.
	// Deadline is then the moment the notice was raised.
	Immediate bool
}

// Source watches one origin of notices.
type Source interface {
	// Name identifies the source in logs and metrics.
	Name() string
	// Watch sends each new notice to notices until ctx is done. It returns nil when ctx ends,
	// and an error only when the source cannot work at all.
	Watch(ctx context.Context, notices chan<- Notice) error
}

// Completer is told when the worker has drained, so the platform can proceed early (an ASG
// lifecycle hook completed, an Azure event acknowledged). Heartbeat extends the platform's
// wait while draining goes on.
type Completer interface {
	// Heartbeat asks the platform to keep waiting.
	Heartbeat(ctx context.Context) error
	// Complete tells the platform that the worker has drained.
	Complete(ctx context.Context) error
}
