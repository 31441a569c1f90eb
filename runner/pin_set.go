package runner

import (
	"os"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pinSet is the set of cache entries one action uses.
type pinSet struct {
	cache   *fileCache
	entries map[*cacheEntry]bool
	tainted error
}

// releaseEntries unpins the given entries of ps without checking them.
func (ps *pinSet) releaseEntries(es map[fileKey]*cacheEntry) {
	c := ps.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range es {
		c.unpinLocked(ps, e)
	}
	c.evictLocked()
}

func (c *fileCache) unpinLocked(ps *pinSet, e *cacheEntry) {
	if e.pinners[ps] <= 1 {
		delete(e.pinners, ps)
	} else {
		e.pinners[ps]--
	}
	delete(ps.entries, e)
}

// release checks every entry ps holds, removes written ones from the cache, unpins them all,
// and returns an UNAVAILABLE error when an entry this action shared with another was written
// while both held it: the action then saw inputs that were not the ones it asked for.
func (ps *pinSet) release() error {
	c := ps.cache
	c.mu.Lock()
	es := make([]*cacheEntry, 0, len(ps.entries))
	for e := range ps.entries {
		if !e.dead {
			es = append(es, e)
		}
	}
	c.mu.Unlock()
	var bad []*cacheEntry
	for _, e := range es {
		fi, err := os.Lstat(e.path)
		if err != nil || !intact(fi, e.key) || fi.Sys().(*syscall.Stat_t).Ino != e.ino {
			bad = append(bad, e)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range bad {
		if e.dead {
			continue
		}
		c.logger.Warn().Str("digest", e.key.digest.String()).Bool("executable", e.key.executable).Int("holders", len(e.pinners)).Msg("An action wrote to a cached input file; removing it from the cache")
		if len(e.pinners) > 1 {
			for p := range e.pinners {
				if p.tainted == nil {
					p.tainted = status.Errorf(codes.Unavailable, "Input file %s was modified by an action while another held it; the result is discarded so the action can be retried", e.key.digest)
				}
			}
		}
		c.removeLocked(e)
		if err := os.Remove(e.path); err != nil && !os.IsNotExist(err) {
			c.logger.Warn().Err(err).Str("path", e.path).Msg("Failed to remove modified file cache entry")
		}
	}
	for e := range ps.entries {
		c.unpinLocked(ps, e)
	}
	c.evictLocked()
	return ps.tainted
}
