package runner

import (
	"container/list"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// messageCache keeps recently used Directory and Command messages in memory, keyed by digest,
// so that a second action with the same input root fetches nothing. Messages are shared and
// must not be modified. It is bounded by the total serialized size of its messages.
type messageCache struct {
	mu      sync.Mutex
	max     int64
	size    int64
	lru     *list.List
	entries map[digest.Digest]*list.Element
}

type messageEntry struct {
	digest digest.Digest
	msg    proto.Message
}

func newMessageCache(max int64) *messageCache {
	return &messageCache{max: max, lru: list.New(), entries: make(map[digest.Digest]*list.Element)}
}

// get returns the message stored for d, or nil.
func (c *messageCache) get(d digest.Digest) proto.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.entries[d]
	if el == nil {
		return nil
	}
	c.lru.MoveToFront(el)
	return el.Value.(*messageEntry).msg
}

// put stores m as the message with digest d.
func (c *messageCache) put(d digest.Digest, m proto.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[d]; ok || d.Size > c.max {
		return
	}
	c.entries[d] = c.lru.PushFront(&messageEntry{digest: d, msg: m})
	c.size += d.Size
	for c.size > c.max {
		el := c.lru.Back()
		e := el.Value.(*messageEntry)
		c.lru.Remove(el)
		delete(c.entries, e.digest)
		c.size -= e.digest.Size
	}
}
