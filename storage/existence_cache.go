package storage

import (
	"container/list"
	"sync"
	"time"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// existenceCache remembers blobs known to be in an object store, and since when their
// lifecycle age counts, so that FindMissing need not ask the object store again for a while
// (ttl), and a read served by the local tier need not ask whether the object needs a refresh
// (objectTime, kept past ttl). Only presence is cached, never absence: a blob uploaded by
// another replica must be seen at once. It holds at most max entries, dropping the
// oldest-checked first. Safe for concurrent use.
type existenceCache struct {
	ttl time.Duration
	max int

	mu      sync.Mutex
	entries map[string]*list.Element // By hash.
	order   *list.List               // Of *existenceEntry, most recently checked at the front.
}

// existenceEntry is one blob known to be present.
type existenceEntry struct {
	d          digest.Digest
	checked    time.Time // When the object store last confirmed the blob.
	objectTime time.Time // The object's lifecycle time as last seen.
}

func newExistenceCache(ttl time.Duration, max int) *existenceCache {
	return &existenceCache{ttl: ttl, max: max, entries: map[string]*list.Element{}, order: list.New()}
}

// get returns the object time of d if d was confirmed present less than ttl before now.
func (c *existenceCache) get(d digest.Digest, now time.Time) (time.Time, bool) {
	if c.ttl <= 0 {
		return time.Time{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[d.Hash]
	if !ok {
		return time.Time{}, false
	}
	e := el.Value.(*existenceEntry)
	if e.d != d || now.Sub(e.checked) >= c.ttl {
		return time.Time{}, false
	}
	return e.objectTime, true
}

// objectTime returns the lifecycle time of d's object as last seen, however long ago that was.
func (c *existenceCache) objectTime(d digest.Digest) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[d.Hash]
	if !ok || el.Value.(*existenceEntry).d != d {
		return time.Time{}, false
	}
	return el.Value.(*existenceEntry).objectTime, true
}

// put records that d was confirmed present at now, its object's lifecycle time objectTime.
func (c *existenceCache) put(d digest.Digest, objectTime, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[d.Hash]; ok {
		el.Value = &existenceEntry{d: d, checked: now, objectTime: objectTime}
		c.order.MoveToFront(el)
		return
	}
	c.entries[d.Hash] = c.order.PushFront(&existenceEntry{d: d, checked: now, objectTime: objectTime})
	for c.order.Len() > c.max {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.entries, oldest.Value.(*existenceEntry).d.Hash)
	}
}

// remove forgets d.
func (c *existenceCache) remove(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[d.Hash]; ok {
		c.order.Remove(el)
		delete(c.entries, d.Hash)
	}
}
