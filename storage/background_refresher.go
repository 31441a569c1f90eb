package storage

import (
	"context"
	"sync"
	"time"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// Bounds of a backgroundRefresher.
const (
	// maxBackgroundRefreshes bounds the bucket requests a backgroundRefresher has in flight; a
	// blob used while they are all busy is skipped (its next use tries again).
	maxBackgroundRefreshes = 8
	// backgroundRefreshTimeout bounds one background refresh.
	backgroundRefreshTimeout = 2 * time.Minute
)

// backgroundRefresher runs the refreshes of blobs read from the local tier off the read's path,
// at most maxBackgroundRefreshes at once and one per blob. Safe for concurrent use.
type backgroundRefresher struct {
	mu      sync.Mutex
	running map[digest.Digest]struct{}
	wg      sync.WaitGroup
}

func newBackgroundRefresher() *backgroundRefresher {
	return &backgroundRefresher{running: map[digest.Digest]struct{}{}}
}

// start runs refresh for d in the background, unless one runs for d already or the refresher
// is full; it reports whether it started one.
func (r *backgroundRefresher) start(d digest.Digest, refresh func(ctx context.Context)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.running[d]; ok || len(r.running) >= maxBackgroundRefreshes {
		return false
	}
	r.running[d] = struct{}{}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), backgroundRefreshTimeout)
		refresh(ctx)
		cancel()
		r.mu.Lock()
		delete(r.running, d)
		r.mu.Unlock()
	}()
	return true
}

// wait returns once the refreshes started so far have ended.
func (r *backgroundRefresher) wait() { r.wg.Wait() }
