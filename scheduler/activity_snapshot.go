package scheduler

import (
	"sort"
	"time"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// The methods of this file are the read-only views status pages (package console) take of the
// scheduler. Each enters the state once and returns copies (protos inside are shared and must
// not be modified); none changes what the scheduler does.

// liveLocked returns the record of an operation that is queued or executing.
func liveLocked(op *operation) ExecutionRecord {
	r := ExecutionRecord{
		Instance: op.instance, Action: op.action, Operation: op.name, Metadata: op.meta,
		Outcome: OutcomeQueued, Attempts: op.attempts, QueuedAt: op.queuedAt,
		LostAttempts: append([]LostAttempt(nil), op.lostAttempts...),
	}
	if r.Metadata == nil {
		r.Metadata = emptyMetadata
	}
	if l := op.lease; l != nil {
		r.Outcome = OutcomeExecuting
		r.Worker = l.session.botID
		r.StartedAt = l.startedAt
	}
	return r
}

// eachLiveLocked calls f for every operation not finished yet, once each.
func (s *Scheduler) eachLiveLocked(f func(op *operation)) {
	for name, op := range s.ops {
		if name == op.name && !op.done && !op.finishing {
			f(op)
		}
	}
}

// Executions returns what the scheduler knows of action d in any instance: its queued or
// executing executions, then the remembered finished ones, newest first.
func (s *Scheduler) Executions(d digest.Digest) []ExecutionRecord {
	s.enter()
	defer s.leave()
	var out []ExecutionRecord
	s.eachLiveLocked(func(op *operation) {
		if op.action == d {
			out = append(out, liveLocked(op))
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].QueuedAt.After(out[j].QueuedAt) })
	return append(out, s.finishedLocked(func(r *ExecutionRecord) bool { return r.Action == d }, maxExecutionRecords)...)
}

// WorkerExecutions returns the remembered finished executions bot botID ran, newest first, at
// most limit.
func (s *Scheduler) WorkerExecutions(botID string, limit int) []ExecutionRecord {
	s.enter()
	defer s.leave()
	return s.finishedLocked(func(r *ExecutionRecord) bool { return r.Worker == botID && r.Outcome != OutcomeCached }, limit)
}

// finishedLocked returns the remembered finished executions keep accepts, newest first, at
// most limit.
func (s *Scheduler) finishedLocked(keep func(*ExecutionRecord) bool, limit int) []ExecutionRecord {
	a := s.act
	var out []ExecutionRecord
	for i := 0; i < len(a.execs) && len(out) < limit; i++ {
		j := (a.next - 1 - i + 2*len(a.execs)) % len(a.execs)
		if keep(&a.execs[j]) {
			out = append(out, a.execs[j])
		}
	}
	return out
}

// Builds returns the remembered builds, most recently active first, with the number of their
// executions queued or executing now.
func (s *Scheduler) Builds() []BuildSummary {
	s.enter()
	defer s.leave()
	running := s.runningByBuildLocked()
	out := make([]BuildSummary, 0, len(s.act.builds)+len(running))
	for id, b := range s.act.builds {
		out = append(out, b.summaryLocked(running[id]))
		delete(running, id)
	}
	// Builds whose first execution has not finished yet.
	for _, r := range running {
		out = append(out, r.summary)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].LastSeen.Equal(out[j].LastSeen) {
			return out[i].LastSeen.After(out[j].LastSeen)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// liveBuild is what runningByBuildLocked gathers of one build's unfinished executions.
type liveBuild struct {
	summary BuildSummary
	live    []ExecutionRecord
}

// runningByBuildLocked gathers the unfinished executions of every build.
func (s *Scheduler) runningByBuildLocked() map[string]*liveBuild {
	out := map[string]*liveBuild{}
	s.eachLiveLocked(func(op *operation) {
		r := liveLocked(op)
		id := buildID(r.Metadata)
		lb := out[id]
		if lb == nil {
			md := r.Metadata
			lb = &liveBuild{summary: BuildSummary{
				ID: id, CorrelatedInvocationsID: md.GetCorrelatedInvocationsId(),
				ToolName: md.GetToolDetails().GetToolName(), ToolVersion: md.GetToolDetails().GetToolVersion(),
				FirstSeen: r.QueuedAt, LastSeen: r.QueuedAt, Counts: map[string]BuildCounts{}, Running: map[string]int{},
			}}
			out[id] = lb
		}
		lb.summary.Running[r.Instance]++
		if r.QueuedAt.Before(lb.summary.FirstSeen) {
			lb.summary.FirstSeen = r.QueuedAt
		}
		if r.QueuedAt.After(lb.summary.LastSeen) {
			lb.summary.LastSeen = r.QueuedAt
		}
		if len(lb.live) < maxLive {
			lb.live = append(lb.live, r)
		}
	})
	return out
}

// summaryLocked returns a copy of the build's summary with the running counts of lb.
func (b *buildRecord) summaryLocked(lb *liveBuild) BuildSummary {
	sum := b.summary
	sum.Counts = make(map[string]BuildCounts, len(b.summary.Counts))
	for k, v := range b.summary.Counts {
		sum.Counts[k] = v
	}
	sum.Running = map[string]int{}
	if lb != nil {
		sum.Running = lb.summary.Running
		if lb.summary.FirstSeen.Before(sum.FirstSeen) {
			sum.FirstSeen = lb.summary.FirstSeen
		}
		if lb.summary.LastSeen.After(sum.LastSeen) {
			sum.LastSeen = lb.summary.LastSeen
		}
	}
	return sum
}

// Build returns the build with tool invocation id (or correlated invocations id) id, and
// whether the scheduler remembers it.
func (s *Scheduler) Build(id string) (BuildDetail, bool) {
	s.enter()
	defer s.leave()
	running := s.runningByBuildLocked()
	lb := running[id]
	b := s.act.builds[id]
	if b == nil && lb == nil {
		return BuildDetail{}, false
	}
	var d BuildDetail
	if lb != nil {
		d.Live = lb.live
		sort.Slice(d.Live, func(i, j int) bool { return d.Live[i].QueuedAt.Before(d.Live[j].QueuedAt) })
	}
	if b == nil {
		d.BuildSummary = lb.summary
		return d, true
	}
	d.BuildSummary = b.summaryLocked(lb)
	d.Actions = make([]ActionSummary, 0, len(b.actions))
	for i := 0; i < len(b.actions); i++ {
		d.Actions = append(d.Actions, b.actions[(b.next-1-i+2*len(b.actions))%len(b.actions)])
	}
	sort.SliceStable(d.Actions, func(i, j int) bool {
		fi, fj := d.Actions[i].Outcome == OutcomeFailed, d.Actions[j].Outcome == OutcomeFailed
		return fi && !fj
	})
	d.Slowest = append([]ActionSummary(nil), b.slowest...)
	return d, true
}

// Interruptions returns the remembered interruptions, newest first.
func (s *Scheduler) Interruptions() []Interruption {
	s.enter()
	defer s.leave()
	out := make([]Interruption, 0, len(s.act.interruptions))
	for i := len(s.act.interruptions) - 1; i >= 0; i-- {
		out = append(out, *s.act.interruptions[i])
	}
	return out
}

// Leases returns the leases every live bot session holds now, by session name, in the order
// they were handed out.
func (s *Scheduler) Leases() map[string][]LeaseView {
	s.enter()
	defer s.leave()
	out := map[string][]LeaseView{}
	for name, b := range s.sessions {
		for _, l := range b.leases {
			md := l.op.meta
			if md == nil {
				md = emptyMetadata
			}
			attempt := 0
			for i, id := range l.op.leaseIDs {
				if id == l.id {
					attempt = i + 1
				}
			}
			out[name] = append(out[name], LeaseView{
				LeaseID: l.id, Instance: l.op.instance, Action: l.op.action, Metadata: md,
				Active: l.active, AssignedAt: l.assignedAt, StartedAt: l.startedAt, Attempt: attempt,
			})
		}
	}
	return out
}

// Queue returns the queued actions grouped by instance name and platform, sorted by instance
// then platform.
func (s *Scheduler) Queue() []QueueGroup {
	s.enter()
	defer s.leave()
	type key struct{ instance, platform string }
	groups := map[key]*QueueGroup{}
	s.queue.each(func(op *operation) {
		k := key{op.instance, op.platform.key}
		g := groups[k]
		if g == nil {
			g = &QueueGroup{Instance: op.instance, Platform: op.platform.key, OldestQueuedAt: op.queuedAt}
			groups[k] = g
		}
		g.Depth++
		if op.queuedAt.Before(g.OldestQueuedAt) {
			g.OldestQueuedAt = op.queuedAt
		}
	})
	out := make([]QueueGroup, 0, len(groups))
	for _, g := range groups {
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Instance != out[j].Instance {
			return out[i].Instance < out[j].Instance
		}
		return out[i].Platform < out[j].Platform
	})
	return out
}

// Throughput returns the finished executions of the last 15 minutes in ThroughputBucketWidth
// buckets, oldest first, ending with the current (partial) bucket; empty buckets included.
func (s *Scheduler) Throughput() []ThroughputBucket {
	s.enter()
	defer s.leave()
	now := s.clk.Now()
	cur := now.UnixNano() / int64(ThroughputBucketWidth)
	out := make([]ThroughputBucket, 0, throughputBuckets)
	for n := cur - throughputBuckets + 1; n <= cur; n++ {
		tb := ThroughputBucket{Start: time.Unix(0, n*int64(ThroughputBucketWidth)), Counts: map[string]BuildCounts{}}
		if b := &s.act.buckets[((n%throughputBuckets)+throughputBuckets)%throughputBuckets]; b.n == n {
			for k, v := range b.counts {
				tb.Counts[k] = v
			}
		}
		out = append(out, tb)
	}
	return out
}

// Now returns the scheduler clock's time, the reference of every time in the views.
func (s *Scheduler) Now() time.Time { return s.clk.Now() }
