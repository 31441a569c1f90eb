package runner

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// actionDir is the private directory of one action: the input root the command runs in, and
// its stdout and stderr beside it (out of the action's reach through relative paths). Close
// takes it out of the action directories at once and removes it all, in the background when
// it has a reaper.
//
// With an action user (owner), the input root and the directories created in it belong to
// that user, while the action directory itself stays the worker's (mode 0711: the user may
// pass through it but neither list it nor replace stdout and stderr, which the worker reads
// back).
type actionDir struct {
	path   string
	root   string
	stdout string
	stderr string
	rootFD int
	owner  *User
	reaper *dirReaper
}

// newActionDir creates a fresh action directory under base, its input root owned by owner
// when set. With a reaper, the action directory is one of its spares when it has one, and
// Close hands it back.
func newActionDir(base string, owner *User, reaper *dirReaper) (*actionDir, error) {
	var p string
	if reaper != nil {
		p = reaper.take(base)
	}
	if p == "" {
		var err error
		if p, err = os.MkdirTemp(base, "a"); err != nil {
			return nil, status.Errorf(codes.Internal, "Failed to create action directory: %v", err)
		}
	}
	d := &actionDir{path: p, root: filepath.Join(p, "root"), stdout: filepath.Join(p, "stdout"), stderr: filepath.Join(p, "stderr"), rootFD: -1, owner: owner, reaper: reaper}
	if err := os.Mkdir(d.root, 0o755); err != nil {
		d.Close()
		return nil, status.Errorf(codes.Internal, "Failed to create action directory: %v", err)
	}
	if owner != nil {
		if err := os.Chmod(p, 0o711); err != nil {
			d.Close()
			return nil, status.Errorf(codes.Internal, "Failed to create action directory: %v", err)
		}
		if err := os.Lchown(d.root, int(owner.UID), int(owner.GID)); err != nil {
			d.Close()
			return nil, status.Errorf(codes.Internal, "Failed to give the input root to the action user: %v", err)
		}
	}
	fd, err := unix.Open(d.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		d.Close()
		return nil, status.Errorf(codes.Internal, "Failed to open action directory: %v", err)
	}
	d.rootFD = fd
	return d, nil
}

// Close removes the action directory, making directories the action left read-only
// writable again first. With a reaper, it is only moved out of the action directories before
// Close returns.
func (d *actionDir) Close() error {
	if d.rootFD >= 0 {
		unix.Close(d.rootFD)
		d.rootFD = -1
	}
	if d.reaper != nil {
		return d.reaper.remove(d.path)
	}
	return removeAll(d.path)
}

// removeAll removes path like os.RemoveAll, also when directories below it are read-only or
// unreadable. Symlinks are never followed.
func removeAll(path string) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = os.RemoveAll(path); err == nil {
			return nil
		}
		if !errors.Is(err, fs.ErrPermission) {
			return err
		}
		_ = filepath.WalkDir(path, func(p string, de fs.DirEntry, werr error) error {
			if de != nil && de.IsDir() {
				_ = os.Chmod(p, 0o700)
			}
			return nil
		})
	}
	return err
}

// cleanRelPath validates a path relative to the input root or working directory: not absolute,
// no ".." component, no NUL. It returns the cleaned path, "." for the empty path.
func cleanRelPath(what, p string) (string, error) {
	if strings.HasPrefix(p, "/") {
		return "", status.Errorf(codes.InvalidArgument, "%s %q is absolute", what, p)
	}
	if strings.ContainsRune(p, 0) {
		return "", status.Errorf(codes.InvalidArgument, "%s %q contains a NUL byte", what, p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", status.Errorf(codes.InvalidArgument, "%s %q contains \"..\"", what, p)
		}
	}
	return filepath.Clean("./" + p), nil
}

// openBeneath opens rel (relative to the input root) without ever resolving outside it:
// symlinks inside the root are followed, one leading outside fails with INVALID_ARGUMENT.
func (d *actionDir) openBeneath(rel string, flags int) (int, error) {
	for {
		fd, err := unix.Openat2(d.rootFD, rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err == unix.EXDEV || err == unix.ELOOP {
			return -1, status.Errorf(codes.InvalidArgument, "Path %q resolves outside the action directory", rel)
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: rel, Err: err}
		}
		return fd, nil
	}
}

// checkWorkingDirectory refuses with INVALID_ARGUMENT a working directory that is not a
// directory of the input tree (Command.working_directory: "It must be a directory which exists
// in the input tree"). Symlinks inside the input root are followed.
func (d *actionDir) checkWorkingDirectory(rel string) error {
	if rel == "." {
		return nil
	}
	fd, err := d.openBeneath(rel, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return status.Errorf(codes.InvalidArgument, "Working directory %q is not a directory of the input root: Command.working_directory must exist in the input tree", rel)
	}
	if status.Code(err) == codes.InvalidArgument {
		return err
	}
	return status.Errorf(codes.Internal, "Failed to open working directory %q: %v", rel, err)
}

// mkdirAll creates rel and its parents inside the input root. Existing symlinks inside the root
// are followed; one leading outside yields INVALID_ARGUMENT. A non-directory on the way is left
// alone: the command finds it as it is.
func (d *actionDir) mkdirAll(rel string) error {
	if rel == "." {
		return nil
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fd, err := d.openBeneath(prefix, unix.O_PATH|unix.O_DIRECTORY)
		if err == nil {
			unix.Close(fd)
			continue
		}
		if status.Code(err) == codes.InvalidArgument {
			return err
		}
		if errors.Is(err, unix.ENOTDIR) {
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return status.Errorf(codes.Internal, "Failed to create directory %q: %v", prefix, err)
		}
		parent := strings.Join(parts[:i], "/")
		if parent == "" {
			parent = "."
		}
		pfd, err := d.openBeneath(parent, unix.O_PATH|unix.O_DIRECTORY)
		if status.Code(err) == codes.InvalidArgument {
			return err
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil // A dangling symlink is in the way.
		}
		if err != nil {
			return status.Errorf(codes.Internal, "Failed to create directory %q: %v", prefix, err)
		}
		err = unix.Mkdirat(pfd, parts[i], 0o755)
		if err == nil && d.owner != nil {
			err = unix.Fchownat(pfd, parts[i], int(d.owner.UID), int(d.owner.GID), unix.AT_SYMLINK_NOFOLLOW)
		}
		unix.Close(pfd)
		if err != nil && err != unix.EEXIST {
			if err == unix.ENOENT {
				return nil // A dangling symlink is in the way.
			}
			return status.Errorf(codes.Internal, "Failed to create directory %q: %v", prefix, err)
		}
	}
	return nil
}
