package runner

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// maxInputNodes bounds the number of files, directories and symlinks one input root may expand
// to, so that a small DAG of Directory messages cannot make the worker create billions of files.
const maxInputNodes = 10_000_000

// inputRoot materializes input roots: it fetches the Directory tree (remembering messages it
// has seen), creates the directories, hardlinks files from the file cache (copying only across
// file systems or past the link limit) and creates symlinks as given, or refuses those that
// may lead outside the input root unless allowEscapingSymlinks.
type inputRoot struct {
	cas         *casClient
	files       *fileCache
	messages    *messageCache
	trees       singleflight.Group
	concurrency int
	// allowEscapingSymlinks lets input symlinks point anywhere (see checkSymlinkTarget).
	allowEscapingSymlinks bool
	// owner, when set, owns every directory created, so that an action running as that user
	// may write in them.
	owner *User
}

// fileJob is one input file to place.
type fileJob struct {
	path string
	key  fileKey
}

// materialize creates the tree rooted at root inside dst, an existing empty directory. The
// file cache entries it uses are pinned in ps. Entry names are validated (INVALID_ARGUMENT) and
// nothing is created outside dst.
func (m *inputRoot) materialize(ctx context.Context, ps *pinSet, root digest.Digest, dst string) error {
	dirs, err := m.fetchTree(ctx, root)
	if err != nil {
		return err
	}
	var files []fileJob
	nodes := 0
	var walk func(d digest.Digest, path, rel string) error
	walk = func(d digest.Digest, path, rel string) error {
		dir := dirs[d]
		nodes += len(dir.GetFiles()) + len(dir.GetDirectories()) + len(dir.GetSymlinks())
		if nodes > maxInputNodes {
			return status.Errorf(codes.InvalidArgument, "Input root %s has more than %d entries", root, maxInputNodes)
		}
		for _, f := range dir.GetFiles() {
			fd, _ := digest.FromProto(f.GetDigest()) // Validated by checkDirectory.
			files = append(files, fileJob{path: filepath.Join(path, f.GetName()), key: fileKey{digest: fd, executable: f.GetIsExecutable()}})
		}
		for _, s := range dir.GetSymlinks() {
			if !m.allowEscapingSymlinks {
				if err := checkSymlinkTarget(filepath.Join(rel, s.GetName()), s.GetTarget()); err != nil {
					return err
				}
			}
			if err := os.Symlink(s.GetTarget(), filepath.Join(path, s.GetName())); err != nil {
				return status.Errorf(codes.Internal, "Failed to create input symlink %s: %v", s.GetName(), err)
			}
		}
		for _, sub := range dir.GetDirectories() {
			sd, _ := digest.FromProto(sub.GetDigest())
			p := filepath.Join(path, sub.GetName())
			if err := os.Mkdir(p, 0o755); err != nil {
				return status.Errorf(codes.Internal, "Failed to create input directory %s: %v", sub.GetName(), err)
			}
			if err := m.own(p); err != nil {
				return err
			}
			if err := walk(sd, p, filepath.Join(rel, sub.GetName())); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root, dst, ""); err != nil {
		return err
	}

	var keys []fileKey
	seen := make(map[fileKey]bool)
	for _, f := range files {
		if f.key.digest.Size > 0 && !seen[f.key] {
			seen[f.key] = true
			keys = append(keys, f.key)
		}
	}
	entries, err := m.files.get(ctx, ps, keys)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(m.concurrency)
	const chunk = 256
	for i := 0; i < len(files); i += chunk {
		part := files[i:min(i+chunk, len(files))]
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return status.FromContextError(err).Err()
			}
			for _, f := range part {
				if err := placeFile(f, entries[f.key]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// own gives the directory at path to the action user, when there is one.
func (m *inputRoot) own(path string) error {
	if m.owner == nil {
		return nil
	}
	if err := os.Lchown(path, int(m.owner.UID), int(m.owner.GID)); err != nil {
		return status.Errorf(codes.Internal, "Failed to give input directory to the action user: %v", err)
	}
	return nil
}

// placeFile hardlinks the cache entry to f.path, or copies it when a link is impossible.
// Empty files are created directly.
func placeFile(f fileJob, e *cacheEntry) error {
	if f.key.digest.Size == 0 {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.key.mode())
		if err != nil {
			return status.Errorf(codes.Internal, "Failed to create input file: %v", err)
		}
		return fh.Close()
	}
	err := os.Link(e.path, f.path)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EMLINK) {
		return status.Errorf(codes.Internal, "Failed to link input file: %v", err)
	}
	src, err := os.Open(e.path)
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to copy input file: %v", err)
	}
	defer src.Close()
	dst, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.key.mode())
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to copy input file: %v", err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return status.Errorf(codes.Internal, "Failed to copy input file: %v", err)
	}
	if err := dst.Close(); err != nil {
		return status.Errorf(codes.Internal, "Failed to copy input file: %v", err)
	}
	return nil
}

// fetchTree returns every Directory of the tree rooted at root, fetching those not in the
// message cache level by level in batches. Concurrent fetches of one root are shared.
func (m *inputRoot) fetchTree(ctx context.Context, root digest.Digest) (map[digest.Digest]*repb.Directory, error) {
	for {
		v, err, _ := m.trees.Do(root.String(), func() (any, error) { return m.fetchTreeOnce(ctx, root) })
		if err != nil && ctx.Err() == nil && (status.Code(err) == codes.Canceled || status.Code(err) == codes.DeadlineExceeded) {
			continue // Another caller's context ended; fetch again under ours.
		}
		if err != nil {
			return nil, err
		}
		return v.(map[digest.Digest]*repb.Directory), nil
	}
}

func (m *inputRoot) fetchTreeOnce(ctx context.Context, root digest.Digest) (map[digest.Digest]*repb.Directory, error) {
	dirs := make(map[digest.Digest]*repb.Directory)
	level := []digest.Digest{root}
	for len(level) > 0 {
		var fetch []digest.Digest
		for _, d := range level {
			if msg := m.messages.get(d); msg != nil {
				dirs[d] = msg.(*repb.Directory)
			} else {
				fetch = append(fetch, d)
			}
		}
		if len(fetch) > 0 {
			blobs, err := m.cas.readBlobs(ctx, fetch)
			if err != nil {
				return nil, rpcstatus.Wrap(err, "Failed to fetch input root %s", root)
			}
			for _, d := range fetch {
				dir := &repb.Directory{}
				if err := proto.Unmarshal(blobs[d], dir); err != nil {
					return nil, status.Errorf(codes.InvalidArgument, "Input directory %s is not a Directory message: %v", d, err)
				}
				if err := checkDirectory(dir); err != nil {
					return nil, rpcstatus.Wrap(err, "Invalid input directory %s", d)
				}
				m.messages.put(d, dir)
				dirs[d] = dir
			}
		}
		var next []digest.Digest
		queued := make(map[digest.Digest]bool)
		for _, d := range level {
			for _, sub := range dirs[d].GetDirectories() {
				sd, _ := digest.FromProto(sub.GetDigest())
				if _, ok := dirs[sd]; !ok && !queued[sd] {
					queued[sd] = true
					next = append(next, sd)
				}
			}
		}
		level = next
	}
	return dirs, nil
}

// checkDirectory validates the names and digests of one Directory message.
func checkDirectory(dir *repb.Directory) error {
	names := make(map[string]bool)
	check := func(name string) error {
		if err := checkName(name); err != nil {
			return err
		}
		if names[name] {
			return status.Errorf(codes.InvalidArgument, "Duplicate entry name %q", name)
		}
		names[name] = true
		return nil
	}
	for _, f := range dir.GetFiles() {
		if err := check(f.GetName()); err != nil {
			return err
		}
		if _, err := digest.FromProto(f.GetDigest()); err != nil {
			return rpcstatus.Wrap(err, "File %q", f.GetName())
		}
	}
	for _, d := range dir.GetDirectories() {
		if err := check(d.GetName()); err != nil {
			return err
		}
		if _, err := digest.FromProto(d.GetDigest()); err != nil {
			return rpcstatus.Wrap(err, "Directory %q", d.GetName())
		}
	}
	for _, s := range dir.GetSymlinks() {
		if err := check(s.GetName()); err != nil {
			return err
		}
		if s.GetTarget() == "" || strings.ContainsRune(s.GetTarget(), 0) {
			return status.Errorf(codes.InvalidArgument, "Symlink %q has an invalid target %q", s.GetName(), s.GetTarget())
		}
	}
	return nil
}

// checkName refuses directory entry names that are empty, "." or "..", or contain "/" or NUL.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return status.Errorf(codes.InvalidArgument, "Invalid directory entry name %q", name)
	}
	return nil
}
