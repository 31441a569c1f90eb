package storage

import (
	"container/list"
	"time"
)

// blobIndex is the in-memory least-recently-used index of a DiskBlobStore: which blobs are on
// disk, their sizes, and in which order they were last used. It is not safe for concurrent use;
// DiskBlobStore guards it with its mutex.
type blobIndex struct {
	entries map[string]*list.Element // By hash.
	order   *list.List               // Of *blobEntry, most recently used at the front.
	total   int64                    // Sum of the sizes of all entries.
}

// blobEntry is one blob in a blobIndex.
type blobEntry struct {
	hash string
	size int64
	// persisted is the modification time last written to the blob's file. The file times carry
	// the use order across restarts; they are refreshed only when they are stale by more than
	// touchGranularity, so hot blobs do not cost a system call on every use.
	persisted time.Time
	// unverified marks a blob found at start-up after an unclean shutdown: without fsync its
	// bytes may not have reached the disk, so it is hashed before it is first served.
	unverified bool
}

func newBlobIndex() *blobIndex {
	return &blobIndex{entries: make(map[string]*list.Element), order: list.New()}
}

// get returns the entry for hash without changing its position.
func (x *blobIndex) get(hash string) (*blobEntry, bool) {
	el, ok := x.entries[hash]
	if !ok {
		return nil, false
	}
	return el.Value.(*blobEntry), true
}

// touch marks the entry for hash as the most recently used and returns it.
func (x *blobIndex) touch(hash string) (*blobEntry, bool) {
	el, ok := x.entries[hash]
	if !ok {
		return nil, false
	}
	x.order.MoveToFront(el)
	return el.Value.(*blobEntry), true
}

// add inserts e as the most recently used entry. The hash must not be present.
func (x *blobIndex) add(e *blobEntry) {
	x.entries[e.hash] = x.order.PushFront(e)
	x.total += e.size
}

// addOldest inserts e as the least recently used entry. Start-up uses it to rebuild the
// order from the newest file to the oldest.
func (x *blobIndex) addOldest(e *blobEntry) {
	x.entries[e.hash] = x.order.PushBack(e)
	x.total += e.size
}

// oldest returns the least recently used entry.
func (x *blobIndex) oldest() (*blobEntry, bool) {
	el := x.order.Back()
	if el == nil {
		return nil, false
	}
	return el.Value.(*blobEntry), true
}

// remove drops the entry for hash.
func (x *blobIndex) remove(hash string) {
	el, ok := x.entries[hash]
	if !ok {
		return
	}
	x.order.Remove(el)
	delete(x.entries, hash)
	x.total -= el.Value.(*blobEntry).size
}

// len returns the number of entries.
func (x *blobIndex) len() int { return len(x.entries) }
