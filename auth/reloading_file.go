package auth

import (
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// reloadingFile holds a value loaded from files and loads it again when one of them changes
// (by modification time, size or mode), keeping the last good value when a new load fails.
type reloadingFile[T any] struct {
	paths  []string
	load   func() (T, error)
	logger zerolog.Logger
	what   string

	mu     sync.Mutex
	value  T
	stamps []fileStamp
	failed []fileStamp
}

// fileStamp identifies a version of a file.
type fileStamp struct {
	modTime time.Time
	size    int64
	mode    os.FileMode
}

// newReloadingFile loads the value a first time; that load's error is returned.
func newReloadingFile[T any](what string, logger zerolog.Logger, load func() (T, error), paths ...string) (*reloadingFile[T], error) {
	r := &reloadingFile[T]{paths: paths, load: load, logger: logger, what: what}
	stamps := r.stat()
	v, err := load()
	if err != nil {
		return nil, err
	}
	r.value, r.stamps = v, stamps
	return r, nil
}

func (r *reloadingFile[T]) stat() []fileStamp {
	stamps := make([]fileStamp, len(r.paths))
	for i, p := range r.paths {
		if fi, err := os.Stat(p); err == nil {
			stamps[i] = fileStamp{modTime: fi.ModTime(), size: fi.Size(), mode: fi.Mode()}
		}
	}
	return stamps
}

func sameStamps(a, b []fileStamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].modTime.Equal(b[i].modTime) || a[i].size != b[i].size || a[i].mode != b[i].mode {
			return false
		}
	}
	return true
}

// get returns the current value, reloading it first if the files changed since the last load.
// A failed load is logged once per version of the files, and the previous value is returned.
func (r *reloadingFile[T]) get() T {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamps := r.stat()
	if sameStamps(stamps, r.stamps) || sameStamps(stamps, r.failed) {
		return r.value
	}
	v, err := r.load()
	if err != nil {
		r.failed = stamps
		r.logger.Error().Err(err).Strs("files", r.paths).Msgf("reloading %s failed; keeping the previous one", r.what)
		return r.value
	}
	r.value, r.stamps, r.failed = v, stamps, nil
	r.logger.Info().Strs("files", r.paths).Msgf("reloaded %s", r.what)
	return r.value
}
