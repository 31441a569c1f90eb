package scheduler

import (
	"sort"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// Bounds of what the scheduler remembers for status pages. Every structure is a ring or a map
// capped by one of these: a long-running scheduler's memory does not grow with its history.
const (
	// maxExecutionRecords is the number of finished executions remembered, with their results.
	maxExecutionRecords = 1000
	// maxBuilds is the number of builds remembered; the least recently active is dropped.
	maxBuilds = 50
	// maxBuildActions is the number of finished executions a build lists.
	maxBuildActions = 1000
	// maxSlowest is the length of a build's slowest-actions list.
	maxSlowest = 10
	// maxLive bounds the queued and executing executions a view lists.
	maxLive = 500
	// maxInterruptions is the number of interruptions remembered.
	maxInterruptions = 100
	// throughputBuckets is the number of ThroughputBucketWidth buckets kept (15 minutes).
	throughputBuckets = 90
	// maxBucketInstances bounds the instance names one throughput bucket counts separately;
	// further ones are counted under OtherInstances.
	maxBucketInstances = 64
	// maxRecordedOutputs bounds the output files and directories kept of a remembered result.
	maxRecordedOutputs = 200
)

// OtherInstances is the instance key under which throughput beyond maxBucketInstances
// instance names in one bucket is counted.
const OtherInstances = "\x00other"

// activity is what the scheduler remembers of past executions, builds and interruptions for
// its status pages. Guarded by Scheduler.mu.
type activity struct {
	// execs is a ring of the last finished executions; next is the slot written next.
	execs []ExecutionRecord
	next  int
	// builds are the remembered builds by id.
	builds map[string]*buildRecord
	// interruptions is a ring of the last interruptions, oldest first; open indexes those
	// whose session is still remembered by session name.
	interruptions []*Interruption
	open          map[string]*Interruption
	// buckets is a ring of throughput buckets indexed by bucket number modulo its length.
	buckets [throughputBuckets]bucket
}

// bucket is one ThroughputBucketWidth of finished executions.
type bucket struct {
	n      int64 // bucket number: start / ThroughputBucketWidth
	counts map[string]BuildCounts
}

// buildRecord is one build's remembered state.
type buildRecord struct {
	summary BuildSummary
	// actions is a ring of the build's last finished executions.
	actions []ActionSummary
	next    int
	slowest []ActionSummary
}

func newActivity() *activity {
	return &activity{builds: map[string]*buildRecord{}, open: map[string]*Interruption{}}
}

// emptyMetadata stands for a client that sent no RequestMetadata.
var emptyMetadata = &repb.RequestMetadata{}

// buildID is the key a build is grouped by.
func buildID(md *repb.RequestMetadata) string {
	if id := md.GetToolInvocationId(); id != "" {
		return id
	}
	return md.GetCorrelatedInvocationsId()
}

// finishedLocked records op finishing with resp or err, as outcome ("executed", "cached",
// "failed", "cancelled").
func (a *activity) finishedLocked(op *operation, resp *repb.ExecuteResponse, outcome string, now time.Time) {
	r := ExecutionRecord{
		Instance:  op.instance,
		Action:    op.action,
		Operation: op.name,
		Metadata:  op.meta,
		Outcome:   outcome,
		Attempts:  op.attempts,
		QueuedAt:  op.queuedAt,
		// The op is done: nothing appends to its lost attempts any more.
		LostAttempts: op.lostAttempts,
		// CompletedAt is the scheduler's time, as every other time of the record.
		CompletedAt: now,
	}
	if r.Metadata == nil {
		r.Metadata = emptyMetadata
	}
	if resp != nil {
		r.Message = resp.Message
		r.StatusCode = codes.Code(resp.Status.GetCode())
		r.StatusMessage = resp.Status.GetMessage()
		if res := resp.Result; res != nil {
			r.Result = boundedResult(res)
			r.ExitCode = res.ExitCode
			md := res.ExecutionMetadata
			r.Worker = md.GetWorker()
			if ts := md.GetWorkerStartTimestamp(); ts != nil && !resp.CachedResult {
				r.StartedAt = ts.AsTime()
			}
		}
	} else {
		r.StatusCode = codes.Canceled
	}
	if outcome == "executed" && r.ExitCode != 0 {
		r.Outcome = OutcomeFailed
	}
	a.addLocked(r, now)
}

// cacheHitLocked records a GetActionResult hit of a client as a cached execution.
func (a *activity) cacheHitLocked(instance string, d digest.Digest, md *repb.RequestMetadata, res *repb.ActionResult, now time.Time) {
	if md == nil {
		md = emptyMetadata
	}
	a.addLocked(ExecutionRecord{
		Instance: instance, Action: d, Metadata: md, Outcome: OutcomeCached,
		Message: "Action cache hit (GetActionResult).", QueuedAt: now, CompletedAt: now,
		ExitCode: res.GetExitCode(), Result: boundedResult(res), Worker: res.GetExecutionMetadata().GetWorker(),
	}, now)
}

// boundedResult returns res, or a copy with at most maxRecordedOutputs outputs of each kind.
func boundedResult(res *repb.ActionResult) *repb.ActionResult {
	if len(res.OutputFiles) <= maxRecordedOutputs && len(res.OutputDirectories) <= maxRecordedOutputs &&
		len(res.OutputSymlinks) <= maxRecordedOutputs && len(res.OutputFileSymlinks) <= maxRecordedOutputs {
		return res
	}
	c := proto.Clone(res).(*repb.ActionResult)
	c.OutputFiles = c.OutputFiles[:min(len(c.OutputFiles), maxRecordedOutputs)]
	c.OutputDirectories = c.OutputDirectories[:min(len(c.OutputDirectories), maxRecordedOutputs)]
	c.OutputSymlinks = c.OutputSymlinks[:min(len(c.OutputSymlinks), maxRecordedOutputs)]
	c.OutputFileSymlinks = c.OutputFileSymlinks[:min(len(c.OutputFileSymlinks), maxRecordedOutputs)]
	return c
}

// addLocked remembers a finished execution in the ring, its build and the throughput.
func (a *activity) addLocked(r ExecutionRecord, now time.Time) {
	if len(a.execs) < maxExecutionRecords {
		a.execs = append(a.execs, r)
	} else {
		a.execs[a.next] = r
	}
	a.next = (a.next + 1) % maxExecutionRecords
	c := countsOf(r)
	a.bucketLocked(now).add(r.Instance, c)
	a.buildLocked(r.Metadata, now).add(r, c)
}

// countsOf is a finished execution's contribution to BuildCounts.
func countsOf(r ExecutionRecord) BuildCounts {
	var c BuildCounts
	switch r.Outcome {
	case OutcomeCached:
		c.Cached = 1
	case OutcomeCancelled:
		c.Cancelled = 1
	case OutcomeFailed:
		c.Failed = 1
		if !r.StartedAt.IsZero() || r.Worker != "" {
			c.Remote = 1
		}
	default:
		c.Remote, c.Succeeded = 1, 1
	}
	return c
}

// bucketLocked returns the throughput bucket of now, resetting a stale slot.
func (a *activity) bucketLocked(now time.Time) *bucket {
	n := now.UnixNano() / int64(ThroughputBucketWidth)
	b := &a.buckets[n%throughputBuckets]
	if b.n != n || b.counts == nil {
		*b = bucket{n: n, counts: map[string]BuildCounts{}}
	}
	return b
}

// add counts c under instance.
func (b *bucket) add(instance string, c BuildCounts) {
	if _, ok := b.counts[instance]; !ok && len(b.counts) >= maxBucketInstances {
		instance = OtherInstances
	}
	cur := b.counts[instance]
	cur.add(c)
	b.counts[instance] = cur
}

// buildLocked returns the record of md's build, creating it (and dropping the least recently
// active build beyond maxBuilds).
func (a *activity) buildLocked(md *repb.RequestMetadata, now time.Time) *buildRecord {
	id := buildID(md)
	b := a.builds[id]
	if b == nil {
		if len(a.builds) >= maxBuilds {
			var oldest *buildRecord
			for _, o := range a.builds {
				if oldest == nil || o.summary.LastSeen.Before(oldest.summary.LastSeen) {
					oldest = o
				}
			}
			delete(a.builds, oldest.summary.ID)
		}
		b = &buildRecord{summary: BuildSummary{
			ID: id, CorrelatedInvocationsID: md.GetCorrelatedInvocationsId(),
			ToolName: md.GetToolDetails().GetToolName(), ToolVersion: md.GetToolDetails().GetToolVersion(),
			FirstSeen: now, Counts: map[string]BuildCounts{},
		}}
		a.builds[id] = b
	}
	b.summary.LastSeen = now
	return b
}

// add remembers a finished execution of the build.
func (b *buildRecord) add(r ExecutionRecord, c BuildCounts) {
	inst := r.Instance
	if _, ok := b.summary.Counts[inst]; !ok && len(b.summary.Counts) >= maxBucketInstances {
		inst = OtherInstances
	}
	if !r.QueuedAt.IsZero() && r.QueuedAt.Before(b.summary.FirstSeen) {
		// The build started when its first action was queued, not when one first finished.
		b.summary.FirstSeen = r.QueuedAt
	}
	cur := b.summary.Counts[inst]
	cur.add(c)
	b.summary.Counts[inst] = cur
	s := ActionSummary{
		Instance: r.Instance, Action: r.Action, Mnemonic: r.Metadata.GetActionMnemonic(),
		TargetID: r.Metadata.GetTargetId(), Outcome: r.Outcome, ExitCode: r.ExitCode, HasResult: r.Result != nil, StatusCode: r.StatusCode,
		Worker: r.Worker, Attempts: r.Attempts, CompletedAt: r.CompletedAt, Duration: r.Duration(),
	}
	if len(b.actions) < maxBuildActions {
		b.actions = append(b.actions, s)
	} else {
		b.actions[b.next] = s
	}
	b.next = (b.next + 1) % maxBuildActions
	if r.Outcome == OutcomeCached || r.Outcome == OutcomeCancelled || r.StartedAt.IsZero() {
		return
	}
	i := sort.Search(len(b.slowest), func(i int) bool { return b.slowest[i].Duration < s.Duration })
	if i >= maxSlowest {
		return
	}
	b.slowest = append(b.slowest, ActionSummary{})
	copy(b.slowest[i+1:], b.slowest[i:])
	b.slowest[i] = s
	if len(b.slowest) > maxSlowest {
		b.slowest = b.slowest[:maxSlowest]
	}
}

// interruptionLocked returns the open interruption record of session b, creating one with
// notice time now if there is none.
func (a *activity) interruptionLocked(b *botSession, now time.Time) *Interruption {
	if in := a.open[b.name]; in != nil {
		return in
	}
	in := &Interruption{BotID: b.botID, Session: b.name, NoticeAt: now}
	if len(a.interruptions) >= maxInterruptions {
		old := a.interruptions[0]
		if a.open[old.Session] == old {
			delete(a.open, old.Session)
		}
		a.interruptions = append(a.interruptions[:0], a.interruptions[1:]...)
	}
	a.interruptions = append(a.interruptions, in)
	a.open[b.name] = in
	return in
}

// drainStartedLocked records that bot session b started draining.
func (a *activity) drainStartedLocked(b *botSession, now time.Time) {
	in := a.interruptionLocked(b, now)
	in.Announced = true
	in.NoticeAt = now
	in.Kind, in.Reason, in.Deadline = b.drain.kind, b.drain.reason, b.drain.deadline
}

// drainUpdatedLocked records a draining session's new drain details.
func (a *activity) drainUpdatedLocked(b *botSession) {
	if in := a.open[b.name]; in != nil && in.Announced {
		in.Kind, in.Reason, in.Deadline = b.drain.kind, b.drain.reason, b.drain.deadline
	}
}

// drainFinishedLocked records a result accepted from draining session b.
func (a *activity) drainFinishedLocked(b *botSession) {
	if in := a.open[b.name]; in != nil {
		in.FinishedDuringDrain++
	}
}

// sessionClosingLocked records that session b is being closed for reason (a requeue reason),
// before its leases are requeued: a session that did not drain is an interruption without
// notice.
func (a *activity) sessionClosingLocked(b *botSession, reason string, now time.Time) {
	in := a.interruptionLocked(b, now)
	in.GoneAt = now
	switch {
	case reason == requeueGone && b.status == rwpb.BotStatus_BOT_TERMINATING && len(b.leases) == 0:
		in.Ended = EndedDrained
	case reason == requeueGone:
		in.Ended = EndedConnectionLost
	case reason == requeueLost:
		in.Ended = EndedReplaced
	default:
		in.Ended = EndedExpired
	}
}

// leaseRequeuedLocked records lease l ending without a result for reason (a requeue reason).
func (a *activity) leaseRequeuedLocked(l *lease, reason string, now time.Time) {
	in := a.open[l.session.name]
	if in == nil || reason == requeueRetry {
		return
	}
	if reason == requeueHandedBack {
		in.HandedBack++
	} else {
		in.Lost++
	}
	if !l.startedAt.IsZero() {
		in.LostWork += now.Sub(l.startedAt)
	}
}
