package scheduler

import (
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// Outcomes of an ExecutionRecord.
const (
	// OutcomeQueued is an execution waiting in the queue.
	OutcomeQueued = "queued"
	// OutcomeExecuting is an execution a worker holds a lease for.
	OutcomeExecuting = "executing"
	// OutcomeExecuted is an execution a worker ran to a zero exit code.
	OutcomeExecuted = "executed"
	// OutcomeCached is a result served from the action cache (Execute without
	// skip_cache_lookup, or GetActionResult).
	OutcomeCached = "cached"
	// OutcomeFailed is an execution that ran with a non-zero exit code or ended with an error
	// status (timeout, retries exhausted, missing inputs, no matching worker).
	OutcomeFailed = "failed"
	// OutcomeCancelled is an execution every client cancelled.
	OutcomeCancelled = "cancelled"
)

// ExecutionRecord is one execution of an action as the scheduler saw it, for status pages.
// Records of finished executions are kept in a bounded ring (Config-independent: the last
// maxExecutionRecords); running and queued ones are read from the live operations.
type ExecutionRecord struct {
	// Instance is the REAPI instance name.
	Instance string
	// Action is the action digest.
	Action digest.Digest
	// Operation is the operation's first name.
	Operation string
	// Metadata is the RequestMetadata header of the client that asked for it; never nil (empty
	// when the client sent none). Shared: do not modify.
	Metadata *repb.RequestMetadata
	// Outcome is one of the Outcome constants.
	Outcome string
	// ExitCode is the action's exit code (0 when it did not run).
	ExitCode int32
	// StatusCode and StatusMessage are the ExecuteResponse status (OK when none).
	StatusCode    codes.Code
	StatusMessage string
	// Message is the ExecuteResponse message (e.g. "Executed on worker w1 (attempt 1).").
	Message string
	// Worker is the bot id that ran it (the current one while executing), empty if none did.
	Worker string
	// Attempts is the number of leases handed out for it.
	Attempts int
	// LostAttempts are the attempts that ended without a result (handed back by a draining
	// worker, lost with a worker's session, or failed with a retryable status), oldest first;
	// at most 10 are kept.
	LostAttempts []LostAttempt
	// QueuedAt is when the scheduler queued it; StartedAt when its worker started it (zero if
	// never); CompletedAt when it finished (zero while running).
	QueuedAt, StartedAt, CompletedAt time.Time
	// Result is the ActionResult, nil while running or when the execution ended without one.
	// Shared: do not modify.
	Result *repb.ActionResult
}

// Failed reports whether the execution failed: an error status or a non-zero exit code.
func (r ExecutionRecord) Failed() bool {
	return r.Outcome == OutcomeFailed
}

// Duration is how long the execution took on its worker (start to completion), or from
// queueing to completion when it never started; zero while running.
func (r ExecutionRecord) Duration() time.Duration {
	if r.CompletedAt.IsZero() {
		return 0
	}
	if !r.StartedAt.IsZero() {
		return r.CompletedAt.Sub(r.StartedAt)
	}
	return r.CompletedAt.Sub(r.QueuedAt)
}

// BuildCounts are the executions of one build in one instance name, by outcome.
type BuildCounts struct {
	// Remote counts executions run by workers (successful or not); Succeeded those of them
	// that exited 0; Cached results served from the action cache; Failed executions that
	// failed (also counted in Remote when they ran); Cancelled executions cancelled by every
	// client. Every finished execution counts once in Succeeded, Cached, Failed or Cancelled.
	Remote, Succeeded, Cached, Failed, Cancelled int
}

// Finished is the number of finished executions counted.
func (c BuildCounts) Finished() int { return c.Succeeded + c.Cached + c.Failed + c.Cancelled }

// add adds o's counts to c.
func (c *BuildCounts) add(o BuildCounts) {
	c.Remote += o.Remote
	c.Succeeded += o.Succeeded
	c.Cached += o.Cached
	c.Failed += o.Failed
	c.Cancelled += o.Cancelled
}

// BuildSummary is one build: the executions sharing a tool invocation id (Bazel's
// --invocation_id, Pants' run id), else a correlated invocations id.
type BuildSummary struct {
	// ID is the tool invocation id ("" for executions whose client sent no RequestMetadata).
	ID string
	// CorrelatedInvocationsID is the client's correlated_invocations_id (Bazel's --build_request_id).
	CorrelatedInvocationsID string
	// ToolName and ToolVersion are from RequestMetadata.tool_details (e.g. "bazel", "4.2.3").
	ToolName, ToolVersion string
	// FirstSeen and LastSeen bound the build's activity at the scheduler.
	FirstSeen, LastSeen time.Time
	// Counts are the finished executions by instance name.
	Counts map[string]BuildCounts
	// Running counts the build's executions currently queued or executing, by instance name.
	Running map[string]int
}

// ActionSummary is a finished execution as a build lists it.
type ActionSummary struct {
	Instance string
	Action   digest.Digest
	Mnemonic string
	TargetID string
	Outcome  string
	ExitCode int32
	// HasResult reports whether the execution ended with an ActionResult: ExitCode means
	// nothing without one (e.g. FAILED_PRECONDITION before any worker ran it).
	HasResult   bool
	StatusCode  codes.Code
	Worker      string
	Attempts    int
	CompletedAt time.Time
	Duration    time.Duration
}

// BuildDetail is one build with its actions.
type BuildDetail struct {
	BuildSummary
	// Actions are the build's finished executions (at most maxBuildActions, the latest),
	// failures first, then newest first.
	Actions []ActionSummary
	// Slowest are the build's slowest executed actions, slowest first (at most maxSlowest).
	Slowest []ActionSummary
	// Live are the build's queued and executing executions (at most maxLive).
	Live []ExecutionRecord
}

// Interruption is one worker that went away or was told to: a drain (with its notice kind,
// reason and deadline) or a session that ended without notice. LostWork is what it cost: the
// action-seconds leases had run before they were handed back or lost.
type Interruption struct {
	BotID, Session string
	// Kind and Reason are the drain notice's (e.g. "spot-interruption", "terminate"); Kind is
	// "" for a worker that vanished without notice.
	Kind, Reason string
	// Announced reports whether the worker drained (BOT_TERMINATING) before it went away.
	Announced bool
	// NoticeAt is when the drain started, or when the unannounced session was closed.
	NoticeAt time.Time
	// Deadline is the drain deadline the worker reported (zero if none).
	Deadline time.Time
	// GoneAt is when the session was closed (zero while it lives).
	GoneAt time.Time
	// Ended says how the session was closed, as far as the scheduler knows: EndedDrained,
	// EndedConnectionLost, EndedExpired or EndedReplaced ("" while it lives).
	Ended string
	// FinishedDuringDrain counts results accepted from the worker while it drained.
	FinishedDuringDrain int
	// HandedBack counts leases the draining worker handed back; Lost leases requeued because
	// the session expired or the worker stopped reporting them.
	HandedBack, Lost int
	// LostWork is the running time of the handed back and lost leases, thrown away.
	LostWork time.Duration
}

// LostAttempt is one lease of an execution that ended without a result.
type LostAttempt struct {
	// Attempt is the attempt number (1 for the first lease).
	Attempt int
	// Worker is the bot id that held the lease.
	Worker string
	// AssignedAt is when the lease was handed out; StartedAt when the worker reported it ACTIVE
	// (zero if it never did); EndedAt when the scheduler gave up on it.
	AssignedAt, StartedAt, EndedAt time.Time
	// Reason is why it ended: "handed-back", "expired", "disconnected", "lost" or "retry" (the
	// reason label of buildfleet_scheduler_leases_requeued_total).
	Reason string
	// Cause is the scheduler's explanation, e.g. "bot w1 (session …) stopped updating its session".
	Cause string
}

// maxLostAttempts bounds the lost attempts remembered per execution.
const maxLostAttempts = 10

// How a worker's session ended (Interruption.Ended).
const (
	// EndedDrained: the worker finished draining (BOT_TERMINATING, no lease left) and stopped
	// calling.
	EndedDrained = "drained"
	// EndedConnectionLost: the worker's call ended with its connection and it did not call again
	// within the disconnect grace (a crash or kill).
	EndedConnectionLost = "connection lost"
	// EndedExpired: the worker stopped calling and its session timed out.
	EndedExpired = "session expired"
	// EndedReplaced: the worker opened a new session (it restarted).
	EndedReplaced = "replaced by a new session"
)

// LeaseView is a lease a worker holds now.
type LeaseView struct {
	LeaseID  string
	Instance string
	Action   digest.Digest
	// Metadata is the RequestMetadata of the execution's client (never nil; shared).
	Metadata *repb.RequestMetadata
	// Active reports whether the worker reported it ACTIVE (StartedAt is then set).
	Active     bool
	AssignedAt time.Time
	StartedAt  time.Time
	// Attempt is the attempt number of this lease (1 for the first).
	Attempt int
}

// QueueGroup is the queued actions of one instance name and platform.
type QueueGroup struct {
	Instance string
	// Platform is the canonical "k=v,k=v" platform ("" for none).
	Platform string
	Depth    int
	// OldestQueuedAt is when the longest waiting action of the group was queued.
	OldestQueuedAt time.Time
}

// ThroughputBucket counts finished executions in one time bucket of one instance name.
type ThroughputBucket struct {
	// Start is the bucket's start; it spans ThroughputBucketWidth.
	Start time.Time
	// Counts are the executions finished in the bucket by instance name.
	Counts map[string]BuildCounts
}

// ThroughputBucketWidth is the width of a ThroughputBucket; Throughput keeps
// throughputBuckets of them (15 minutes).
const ThroughputBucketWidth = 10 * time.Second
