package runner

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// reaperBacklog bounds the finished action directories waiting for removal; past it, they
	// are removed by the action itself, so that a slow disk holds back actions instead of
	// filling up.
	reaperBacklog = 64
	// maxSpares bounds the emptied action directories kept for reuse.
	maxSpares = 64
)

// dirReaper removes finished action directories off the actions' critical path. A finished
// directory is first renamed into the reaper's own directory (mode 0700, out of every action's
// reach and out of the action directories), which is one cheap metadata operation, then removed
// by a background goroutine. Removal is the costly part: unlinking every file the action left,
// and freeing the inodes and directory blocks (a synchronous discard on file systems mounted
// with -o discard).
//
// The action directory itself (the worker's, mode 0711 or 0700, never the action's) is emptied
// and kept as a spare that the next action renames into place, instead of being removed and
// created again: creating and freeing inodes is what costs most per action on a busy file
// system. The input root and the logs in it are always new.
type dirReaper struct {
	dir    string
	mode   os.FileMode // Of the action directories.
	logger zerolog.Logger
	seq    atomic.Uint64

	mu      sync.Mutex
	closed  bool
	pending chan string
	done    chan struct{}
	spares  []string
}

// newDirReaper empties dir (left behind by a worker that crashed), creates it if missing and
// starts the background removal.
func newDirReaper(dir string, mode os.FileMode, logger zerolog.Logger) (*dirReaper, error) {
	if err := removeAll(dir); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to remove finished action directories in %s: %v", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "Failed to create %s: %v", dir, err)
	}
	r := &dirReaper{dir: dir, mode: mode, logger: logger, pending: make(chan string, reaperBacklog), done: make(chan struct{})}
	go r.loop()
	return r, nil
}

func (r *dirReaper) loop() {
	defer close(r.done)
	for p := range r.pending {
		if r.empty(p) {
			r.mu.Lock()
			if !r.closed && len(r.spares) < maxSpares {
				r.spares = append(r.spares, p)
				p = ""
			}
			r.mu.Unlock()
			if p == "" {
				continue
			}
		}
		if err := removeAll(p); err != nil {
			r.logger.Warn().Err(err).Str("path", p).Msg("Failed to remove finished action directory")
		}
	}
}

// empty removes everything in the action directory at p and restores its mode, reporting
// whether it is ready for reuse.
func (r *dirReaper) empty(p string) bool {
	des, err := os.ReadDir(p)
	if err != nil {
		return false
	}
	for _, de := range des {
		if removeAll(filepath.Join(p, de.Name())) != nil {
			return false
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Uid != uint32(os.Geteuid()) {
		return false
	}
	return os.Chmod(p, r.mode) == nil
}

// take moves a spare action directory to a new random name in base and returns its path, or
// "" when there is none.
func (r *dirReaper) take(base string) string {
	for {
		r.mu.Lock()
		if len(r.spares) == 0 {
			r.mu.Unlock()
			return ""
		}
		p := r.spares[len(r.spares)-1]
		r.spares = r.spares[:len(r.spares)-1]
		r.mu.Unlock()
		for range 10 {
			dst := filepath.Join(base, "a"+strconv.FormatUint(uint64(rand.Uint32()), 10))
			err := unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
			if err == nil {
				return dst
			}
			if err != unix.EEXIST {
				break
			}
		}
		_ = removeAll(p)
	}
}

// remove takes the directory at path away at once and removes it in the background; when the
// backlog is full, when the reaper is closed or when it cannot be moved, it is removed before
// remove returns.
func (r *dirReaper) remove(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || len(r.pending) == cap(r.pending) {
		return removeAll(path)
	}
	dst := filepath.Join(r.dir, strconv.FormatUint(r.seq.Add(1), 10))
	if err := os.Rename(path, dst); err != nil {
		return removeAll(path)
	}
	r.pending <- dst // Never blocks: there is room and only remove sends, under mu.
	return nil
}

// Close waits for the directories already handed over to be removed; later ones are removed
// synchronously.
func (r *dirReaper) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.pending)
	}
	r.mu.Unlock()
	<-r.done
}
