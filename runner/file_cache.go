package runner

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// cacheMtime is the modification time of every file in the cache. A write to a cached file
// (even by root, which ignores the read-only mode) moves its mtime, so an entry whose size,
// mode and mtime still match is intact: the check costs one lstat and survives restarts.
var cacheMtime = time.Unix(946684800, 0) // 2000-01-01T00:00:00Z

// fileKey names a cache entry: the executable and non-executable variants of one digest are
// separate files, because hardlinks share their mode.
type fileKey struct {
	digest     digest.Digest
	executable bool
}

func (k fileKey) mode() os.FileMode {
	if k.executable {
		return 0o555
	}
	return 0o444
}

func (k fileKey) name() string {
	n := k.digest.Hash + "-" + strconv.FormatInt(k.digest.Size, 10)
	if k.executable {
		n += "-x"
	}
	return n
}

// cacheEntry is one file in the cache.
type cacheEntry struct {
	key     fileKey
	path    string
	ino     uint64
	elem    *list.Element
	pinners map[*pinSet]int
	dead    bool
}

// fetchCall is an in-flight download of one digest that other callers wait for.
type fetchCall struct {
	digest digest.Digest
	done   chan struct{}
	err    error
	once   sync.Once
}

// fileCache is the worker's local content-addressed file cache: read-only files under
// DIR/<first two hex digits>/<hash>-<size>[-x], fetched from the remote CAS on a miss, bounded
// in total size with least-recently-used eviction, and rebuilt from disk at start-up.
//
// Actions use entries through a pinSet: pinned entries are never evicted, and when the action
// ends its pins are released after checking that none of its entries was written to. A
// written entry is removed from the cache; when another action shared it meanwhile, every
// action that held it is tainted and must not report its result.
type fileCache struct {
	dir         string
	tmpDir      string
	maxSize     int64
	cas         *casClient
	concurrency int
	logger      zerolog.Logger

	mu       sync.Mutex
	entries  map[fileKey]*cacheEntry
	lru      *list.List // Front is most recently used.
	size     int64
	inflight map[digest.Digest]*fetchCall
	tmpSeq   atomic.Uint64
}

// newFileCache opens the cache in dir, removing partial downloads and entries that are not
// intact, and ordering the rest by their last use (the ctime moves with every hardlink).
func newFileCache(dir string, maxSize int64, cas *casClient, concurrency int, logger zerolog.Logger) (*fileCache, error) {
	c := &fileCache{
		dir:         dir,
		tmpDir:      filepath.Join(dir, "tmp"),
		maxSize:     maxSize,
		cas:         cas,
		concurrency: concurrency,
		logger:      logger,
		entries:     make(map[fileKey]*cacheEntry),
		lru:         list.New(),
		inflight:    make(map[digest.Digest]*fetchCall),
	}
	if err := removeAll(c.tmpDir); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to clean %s: %v", c.tmpDir, err)
	}
	if err := os.MkdirAll(c.tmpDir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to create the file cache: %v", err)
	}
	for i := 0; i < 256; i++ {
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("%02x", i)), 0o755); err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to create the file cache: %v", err)
		}
	}
	if err := c.scan(); err != nil {
		return nil, err
	}
	return c, nil
}

type scanned struct {
	key   fileKey
	ino   uint64
	ctime int64
}

func (c *fileCache) scan() error {
	var found []scanned
	removed := 0
	for i := 0; i < 256; i++ {
		shard := filepath.Join(c.dir, fmt.Sprintf("%02x", i))
		des, err := os.ReadDir(shard)
		if err != nil {
			return status.Errorf(codes.Internal, "Failed to scan the file cache: %v", err)
		}
		for _, de := range des {
			p := filepath.Join(shard, de.Name())
			key, ok := parseEntryName(de.Name())
			var fi os.FileInfo
			if ok && strings.HasPrefix(key.digest.Hash, fmt.Sprintf("%02x", i)) {
				fi, err = os.Lstat(p)
				ok = err == nil && intact(fi, key)
			} else {
				ok = false
			}
			if !ok {
				removed++
				if err := removeAll(p); err != nil {
					return status.Errorf(codes.Internal, "Failed to remove %s from the file cache: %v", p, err)
				}
				continue
			}
			st := fi.Sys().(*syscall.Stat_t)
			found = append(found, scanned{key: key, ino: st.Ino, ctime: st.Ctim.Nano()})
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].ctime < found[j].ctime })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range found {
		e := c.insertLocked(s.key, s.ino)
		_ = e
	}
	c.evictLocked()
	c.logger.Info().Int("entries", len(c.entries)).Int64("bytes", c.size).Int("removed", removed).Msg("Opened file cache")
	return nil
}

func parseEntryName(name string) (fileKey, bool) {
	exec := false
	if strings.HasSuffix(name, "-x") {
		exec = true
		name = strings.TrimSuffix(name, "-x")
	}
	i := strings.IndexByte(name, '-')
	if i < 0 {
		return fileKey{}, false
	}
	size, err := strconv.ParseInt(name[i+1:], 10, 64)
	if err != nil {
		return fileKey{}, false
	}
	d, err := digest.New(name[:i], size)
	if err != nil {
		return fileKey{}, false
	}
	return fileKey{digest: d, executable: exec}, true
}

// intact reports whether fi describes an unmodified cache file for key.
func intact(fi os.FileInfo, key fileKey) bool {
	return fi.Mode().IsRegular() && fi.Size() == key.digest.Size && fi.Mode().Perm() == key.mode() && fi.ModTime().Equal(cacheMtime)
}

func (c *fileCache) pathOf(k fileKey) string {
	return filepath.Join(c.dir, k.digest.Hash[:2], k.name())
}

func (c *fileCache) insertLocked(k fileKey, ino uint64) *cacheEntry {
	if old := c.entries[k]; old != nil {
		c.removeLocked(old)
	}
	e := &cacheEntry{key: k, path: c.pathOf(k), ino: ino, pinners: make(map[*pinSet]int)}
	e.elem = c.lru.PushFront(e)
	c.entries[k] = e
	c.size += k.digest.Size
	return e
}

// removeLocked takes e out of the index; its file is left to the caller.
func (c *fileCache) removeLocked(e *cacheEntry) {
	if e.dead {
		return
	}
	e.dead = true
	c.lru.Remove(e.elem)
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	c.size -= e.key.digest.Size
}

// evictLocked removes least recently used unpinned entries until the cache fits its bound.
func (c *fileCache) evictLocked() {
	for el := c.lru.Back(); el != nil && c.size > c.maxSize; {
		e := el.Value.(*cacheEntry)
		el = el.Prev()
		if len(e.pinners) > 0 {
			continue
		}
		c.removeLocked(e)
		if err := os.Remove(e.path); err != nil && !os.IsNotExist(err) {
			c.logger.Warn().Err(err).Str("path", e.path).Msg("Failed to evict file cache entry")
		}
	}
}

func (c *fileCache) newPinSet() *pinSet {
	return &pinSet{cache: c, entries: make(map[*cacheEntry]bool)}
}

func (c *fileCache) pinLocked(ps *pinSet, e *cacheEntry) {
	e.pinners[ps]++
	ps.entries[e] = true
	c.lru.MoveToFront(e.elem)
}

// get returns pinned cache entries for keys, fetching the missing ones from the CAS (deduplicated
// with concurrent callers) or copying them from the other executable variant of the same digest.
// Blobs the CAS does not hold yield a MISSING precondition failure naming all of them.
func (c *fileCache) get(ctx context.Context, ps *pinSet, keys []fileKey) (map[fileKey]*cacheEntry, error) {
	result := make(map[fileKey]*cacheEntry, len(keys))
	pending := make(map[fileKey]bool, len(keys))
	for _, k := range keys {
		pending[k] = true
	}
	for round := 0; len(pending) > 0; round++ {
		if round >= 8 {
			return nil, status.Errorf(codes.Unavailable, "File cache is evicting entries faster than they can be used (%d files pending); it may be too small", len(pending))
		}
		var copies []copyJob
		var own []*fetchCall
		var waits []*fetchCall
		c.mu.Lock()
		owned := map[digest.Digest]bool{}
		for k := range pending {
			if e := c.entries[k]; e != nil {
				c.pinLocked(ps, e)
				result[k] = e
				delete(pending, k)
				continue
			}
			if other := c.entries[fileKey{digest: k.digest, executable: !k.executable}]; other != nil {
				c.pinLocked(ps, other)
				copies = append(copies, copyJob{key: k, src: other})
				continue
			}
			if owned[k.digest] {
				continue // Fetched as the other variant this round; copied next round.
			}
			if call := c.inflight[k.digest]; call != nil {
				waits = append(waits, call)
				continue
			}
			call := &fetchCall{digest: k.digest, done: make(chan struct{})}
			c.inflight[k.digest] = call
			owned[k.digest] = true
			own = append(own, call)
		}
		c.mu.Unlock()

		got, err := c.fill(ctx, ps, copies, own, pending)
		for k, e := range got {
			result[k] = e
			delete(pending, k)
		}
		if err != nil {
			return nil, err
		}
		var missing []digest.Digest
		for _, call := range waits {
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			if status.Code(call.err) == codes.NotFound {
				missing = append(missing, call.digest)
			} else if call.err != nil {
				return nil, call.err
			}
		}
		if len(missing) > 0 {
			return nil, rpcstatus.Missing(missingMessage(missing), missing)
		}
	}
	return result, nil
}

type copyJob struct {
	key fileKey
	src *cacheEntry
}

// fill performs one round of copies and downloads, returning the entries it created (pinned).
func (c *fileCache) fill(ctx context.Context, ps *pinSet, copies []copyJob, own []*fetchCall, pending map[fileKey]bool) (map[fileKey]*cacheEntry, error) {
	var mu sync.Mutex
	got := make(map[fileKey]*cacheEntry)
	var missing []digest.Digest
	// keyFor picks the variant a download is stored as: the one asked for (non-executable
	// when both are).
	keyFor := func(d digest.Digest) fileKey {
		if pending[fileKey{digest: d}] {
			return fileKey{digest: d}
		}
		return fileKey{digest: d, executable: true}
	}
	finish := func(call *fetchCall, err error) {
		call.once.Do(func() {
			call.err = err
			c.mu.Lock()
			delete(c.inflight, call.digest)
			c.mu.Unlock()
			close(call.done)
		})
	}
	defer func() {
		for _, call := range own {
			finish(call, status.Error(codes.Aborted, "Download abandoned"))
		}
	}()
	store := func(k fileKey, write func(*os.File) error) error {
		e, err := c.store(ps, k, write)
		if err != nil {
			return err
		}
		mu.Lock()
		got[k] = e
		mu.Unlock()
		return nil
	}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.concurrency)
	for _, j := range copies {
		g.Go(func() error {
			return store(j.key, func(f *os.File) error {
				src, err := os.Open(j.src.path)
				if err != nil {
					return status.Errorf(codes.Internal, "Failed to copy file cache entry: %v", err)
				}
				defer src.Close()
				if _, err := io.Copy(f, src); err != nil {
					return status.Errorf(codes.Internal, "Failed to copy file cache entry: %v", err)
				}
				return nil
			})
		})
	}
	calls := make(map[digest.Digest]*fetchCall, len(own))
	var small []digest.Digest
	for _, call := range own {
		calls[call.digest] = call
		if c.cas.fitsInBatch(ctx, call.digest.Size) {
			small = append(small, call.digest)
			continue
		}
		g.Go(func() error {
			err := store(keyFor(call.digest), func(f *os.File) error {
				return c.cas.readStream(gctx, call.digest, f)
			})
			finish(call, err)
			if status.Code(err) == codes.NotFound {
				mu.Lock()
				missing = append(missing, call.digest)
				mu.Unlock()
				return nil
			}
			return err
		})
	}
	for _, batch := range c.cas.batches(ctx, small) {
		g.Go(func() error {
			err := c.cas.batchRead(gctx, batch, func(d digest.Digest, data []byte) error {
				if data == nil {
					mu.Lock()
					missing = append(missing, d)
					mu.Unlock()
					finish(calls[d], status.Errorf(codes.NotFound, "Blob %s not found", d))
					return nil
				}
				err := store(keyFor(d), func(f *os.File) error {
					_, err := f.Write(data)
					return err
				})
				finish(calls[d], err)
				return err
			})
			for _, d := range batch {
				finish(calls[d], err)
			}
			return err
		})
	}
	err := g.Wait()
	if err == nil && len(missing) > 0 {
		err = rpcstatus.Missing(missingMessage(missing), missing)
	}
	if err != nil {
		ps.releaseEntries(got)
		return nil, err
	}
	return got, nil
}

// store writes a new entry for k through a temporary file, makes it read-only with the cache
// mtime, renames it into place and returns it pinned by ps.
func (c *fileCache) store(ps *pinSet, k fileKey, write func(*os.File) error) (*cacheEntry, error) {
	tmp := filepath.Join(c.tmpDir, k.name()+"."+strconv.FormatUint(c.tmpSeq.Add(1), 10))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, k.mode())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to create a file in the cache: %v", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := write(f); err != nil {
		return nil, err
	}
	ts := unix.NsecToTimespec(cacheMtime.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, []unix.Timespec{ts, ts}, 0); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to write a file in the cache: %v", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to write a file in the cache: %v", err)
	}
	if fi.Mode().Perm() != k.mode() { // A restrictive umask.
		if err := f.Chmod(k.mode()); err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to write a file in the cache: %v", err)
		}
	}
	if fi.Size() != k.digest.Size {
		return nil, status.Errorf(codes.Internal, "File cache entry for %s has %d bytes", k.digest, fi.Size())
	}
	if err := f.Close(); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to write a file in the cache: %v", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.Rename(tmp, c.pathOf(k)); err != nil {
		os.Remove(tmp)
		return nil, status.Errorf(codes.Internal, "Failed to write a file in the cache: %v", err)
	}
	ok = true
	e := c.insertLocked(k, fi.Sys().(*syscall.Stat_t).Ino)
	c.pinLocked(ps, e)
	c.evictLocked()
	return e, nil
}

// stats returns the number of entries and their total size.
func (c *fileCache) stats() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.size
}
