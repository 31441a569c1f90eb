package scheduler

import (
	"container/heap"
	"slices"
)

// fairQueue holds the queued operations. It serves instance names round-robin, within an
// instance the tool invocations round-robin, within an invocation the lowest priority value
// first, then arrival order. Selection is filtered by what the asking bot can run.
type fairQueue struct {
	instances ring[*instanceQueue]
	byName    map[string]*instanceQueue
	// depth counts queued operations per platform key.
	depth map[string]int
}

// instanceQueue is one instance name's share of the queue.
type instanceQueue struct {
	name        string
	invocations ring[*invocationQueue]
	byKey       map[string]*invocationQueue
	length      int
}

// invocationQueue is one tool invocation's share of an instance's queue, grouped by platform
// so that a bot only looks at the head of each group it can run.
type invocationQueue struct {
	key    string
	groups map[string]*platformGroup
	length int
}

// platformGroup holds one invocation's operations of one platform, as a heap.
type platformGroup struct {
	platform platform
	ops      opHeap
}

// queuePos is where a queued operation sits.
type queuePos struct {
	inst  *instanceQueue
	inv   *invocationQueue
	group *platformGroup
	index int
}

func newFairQueue() *fairQueue {
	return &fairQueue{byName: map[string]*instanceQueue{}, depth: map[string]int{}}
}

// instanceLength returns the number of queued operations of an instance name.
func (q *fairQueue) instanceLength(instance string) int {
	if iq := q.byName[instance]; iq != nil {
		return iq.length
	}
	return 0
}

// push queues op under its instance, invocation and platform.
func (q *fairQueue) push(op *operation) {
	iq := q.byName[op.instance]
	if iq == nil {
		iq = &instanceQueue{name: op.instance, byKey: map[string]*invocationQueue{}}
		q.byName[op.instance] = iq
		q.instances.add(iq)
	}
	inv := iq.byKey[op.invocation]
	if inv == nil {
		inv = &invocationQueue{key: op.invocation, groups: map[string]*platformGroup{}}
		iq.byKey[op.invocation] = inv
		iq.invocations.add(inv)
	}
	g := inv.groups[op.platform.key]
	if g == nil {
		g = &platformGroup{platform: op.platform}
		inv.groups[op.platform.key] = g
	}
	op.qpos = &queuePos{inst: iq, inv: inv, group: g}
	heap.Push(&g.ops, op)
	inv.length++
	iq.length++
	q.depth[op.platform.key]++
}

// popFor removes and returns the next operation, in fair order, whose platform can(platform)
// accepts, or nil.
func (q *fairQueue) popFor(can func(platform) bool) *operation {
	for i := 0; i < q.instances.len(); i++ {
		j := q.instances.at(i)
		iq := q.instances.items[j]
		for k := 0; k < iq.invocations.len(); k++ {
			m := iq.invocations.at(k)
			inv := iq.invocations.items[m]
			var best *operation
			for _, g := range inv.groups {
				if len(g.ops) == 0 || !can(g.platform) {
					continue
				}
				if head := g.ops[0]; best == nil || g.ops.less(head, best) {
					best = head
				}
			}
			if best == nil {
				continue
			}
			q.instances.served(j)
			iq.invocations.served(m)
			q.remove(best)
			return best
		}
	}
	return nil
}

// remove takes a queued op out of the queue.
func (q *fairQueue) remove(op *operation) {
	pos := op.qpos
	if pos == nil {
		return
	}
	heap.Remove(&pos.group.ops, pos.index)
	op.qpos = nil
	q.depth[op.platform.key]--
	if q.depth[op.platform.key] == 0 {
		delete(q.depth, op.platform.key)
	}
	pos.inv.length--
	pos.inst.length--
	if len(pos.group.ops) == 0 {
		delete(pos.inv.groups, op.platform.key)
	}
	if pos.inv.length == 0 {
		delete(pos.inst.byKey, pos.inv.key)
		pos.inst.invocations.remove(pos.inv)
	}
	if pos.inst.length == 0 {
		delete(q.byName, pos.inst.name)
		q.instances.remove(pos.inst)
	}
}

// each calls f for every queued operation, in no particular order.
func (q *fairQueue) each(f func(*operation)) {
	for _, iq := range q.instances.items {
		for _, inv := range iq.invocations.items {
			for _, g := range inv.groups {
				for _, op := range g.ops {
					f(op)
				}
			}
		}
	}
}

// ring is a round-robin list: next is the index served next.
type ring[T comparable] struct {
	items []T
	next  int
}

func (r *ring[T]) len() int { return len(r.items) }

// at returns the index of the i-th item in serving order.
func (r *ring[T]) at(i int) int { return (r.next + i) % len(r.items) }

// add appends x; it is served after everything already present.
func (r *ring[T]) add(x T) {
	if len(r.items) > 0 && r.next == 0 {
		// Insert before the item served next so that x waits a full round.
		r.items = append(r.items, x)
		return
	}
	r.items = slices.Insert(r.items, r.next, x)
	r.next++
}

// served records that item j was just served: the one after it is next.
func (r *ring[T]) served(j int) {
	r.next = j + 1
	if r.next >= len(r.items) {
		r.next = 0
	}
}

// remove deletes x, keeping the serving order of the rest.
func (r *ring[T]) remove(x T) {
	j := slices.Index(r.items, x)
	if j < 0 {
		return
	}
	r.items = slices.Delete(r.items, j, j+1)
	if j < r.next {
		r.next--
	}
	if r.next >= len(r.items) {
		r.next = 0
	}
}

// opHeap orders operations by priority value (lower first), then arrival.
type opHeap []*operation

func (h opHeap) less(a, b *operation) bool {
	if a.priority != b.priority {
		return a.priority < b.priority
	}
	return a.seq < b.seq
}

func (h opHeap) Len() int           { return len(h) }
func (h opHeap) Less(i, j int) bool { return h.less(h[i], h[j]) }
func (h opHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].qpos.index = i
	h[j].qpos.index = j
}

func (h *opHeap) Push(x any) {
	op := x.(*operation)
	op.qpos.index = len(*h)
	*h = append(*h, op)
}

func (h *opHeap) Pop() any {
	old := *h
	op := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return op
}
