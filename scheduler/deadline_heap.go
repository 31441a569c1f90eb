package scheduler

import (
	"container/heap"
	"time"
)

// deadlineKind says what a deadline is for.
type deadlineKind int

const (
	// sessionExpiry closes a bot session that was not updated in time.
	sessionExpiry deadlineKind = iota
	// unmatchedPlatform fails a queued action no connected bot can run.
	unmatchedPlatform
	// operationRetention forgets a finished operation.
	operationRetention
	// goneRetention drops a closed session from the worker view.
	goneRetention
	// sessionDisconnect closes a bot session whose call ended because its connection did
	// (the bot's process died), unless the bot called again meanwhile.
	sessionDisconnect
)

// deadline is one entry of the scheduler's min-heap of things due at a time. Entries are never
// removed early: gen is compared with the target's current generation when the entry comes due,
// and a stale entry is dropped.
type deadline struct {
	at      time.Time
	kind    deadlineKind
	session *botSession
	op      *operation
	gen     uint64
}

// deadlineHeap is a min-heap of deadlines by time.
type deadlineHeap []deadline

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h deadlineHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlineHeap) Push(x any)        { *h = append(*h, x.(deadline)) }
func (h *deadlineHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = deadline{}
	*h = old[:len(old)-1]
	return d
}

// add schedules d.
func (h *deadlineHeap) add(d deadline) { heap.Push(h, d) }

// popDue removes and returns the earliest deadline if it is not after now.
func (h *deadlineHeap) popDue(now time.Time) (deadline, bool) {
	if len(*h) == 0 || (*h)[0].at.After(now) {
		return deadline{}, false
	}
	return heap.Pop(h).(deadline), true
}

// earliest returns the time of the earliest deadline.
func (h deadlineHeap) earliest() (time.Time, bool) {
	if len(h) == 0 {
		return time.Time{}, false
	}
	return h[0].at, true
}
