package runner

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

const (
	// inlineOutputLimit is the largest output file kept in memory for upload; larger ones are
	// read again from the action directory.
	inlineOutputLimit = 1 << 20
	// inlineOutputBudget bounds the memory held by in-memory output files of one action.
	inlineOutputBudget = 64 << 20
)

// outputKind says what a requested output may be.
type outputKind int

const (
	outputAny outputKind = iota // output_paths: whatever is there.
	outputFile
	outputDirectory
)

// outputSpec is one requested output.
type outputSpec struct {
	name string // As the client gave it, relative to the working directory.
	rel  string // Cleaned, relative to the input root.
	kind outputKind
}

// outputs is the validated list of outputs a Command asks for.
type outputs struct {
	specs  []outputSpec
	format repb.Command_OutputDirectoryFormat
	// absoluteSymlinks accepts output symlinks with absolute targets (the worker runs with
	// --allow-escaping-symlinks); otherwise they are FAILED_PRECONDITION.
	absoluteSymlinks bool
}

// parseOutputs validates the outputs of cmd, taken from output_paths (REAPI 2.1) or else
// output_files and output_directories. Absolute paths and ".." are INVALID_ARGUMENT.
func parseOutputs(cmd *repb.Command, workDir string) (*outputs, error) {
	o := &outputs{format: cmd.GetOutputDirectoryFormat()}
	switch o.format {
	case repb.Command_TREE_ONLY, repb.Command_DIRECTORY_ONLY, repb.Command_TREE_AND_DIRECTORY:
	default:
		// REAPI: a format the worker does not know "SHOULD" be read as TREE_ONLY.
		o.format = repb.Command_TREE_ONLY
	}
	add := func(name string, kind outputKind) error {
		if name == "" && kind != outputDirectory {
			return status.Error(codes.InvalidArgument, "Output path is empty")
		}
		clean, err := cleanRelPath("Output path", name)
		if err != nil {
			return err
		}
		o.specs = append(o.specs, outputSpec{name: name, rel: filepath.Join(workDir, clean), kind: kind})
		return nil
	}
	if len(cmd.GetOutputPaths()) > 0 {
		for _, p := range cmd.GetOutputPaths() {
			if err := add(p, outputAny); err != nil {
				return nil, err
			}
		}
		return o, nil
	}
	for _, p := range cmd.GetOutputFiles() {
		if err := add(p, outputFile); err != nil {
			return nil, err
		}
	}
	for _, p := range cmd.GetOutputDirectories() {
		if err := add(p, outputDirectory); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// createParents creates the parent directories of every output (and output directories
// themselves are left to the command).
func (o *outputs) createParents(d *actionDir) error {
	for _, s := range o.specs {
		if err := d.mkdirAll(filepath.Dir(s.rel)); err != nil {
			return err
		}
	}
	return nil
}

// outputCollector gathers the outputs of a finished action into an ActionResult and the blobs
// to upload. It reads only inside the input root and never follows a symlink it reports.
type outputCollector struct {
	dir              *actionDir
	absoluteSymlinks bool
	blobs            map[digest.Digest]uploadSource
	inline           int64
}

// collect fills result's output fields for o and returns the blobs to upload.
func (o *outputs) collect(d *actionDir, result *repb.ActionResult) (map[digest.Digest]uploadSource, error) {
	c := &outputCollector{dir: d, blobs: make(map[digest.Digest]uploadSource), absoluteSymlinks: o.absoluteSymlinks}
	for _, s := range o.specs {
		if err := c.collectOne(o, s, result); err != nil {
			return nil, err
		}
	}
	return c.blobs, nil
}

func (c *outputCollector) collectOne(o *outputs, s outputSpec, result *repb.ActionResult) error {
	parent, base := filepath.Dir(s.rel), filepath.Base(s.rel)
	var pfd int
	var err error
	if s.rel == "." {
		pfd, base = -1, "."
	} else {
		pfd, err = c.dir.openBeneath(parent, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil // Missing outputs are simply absent.
		}
		if err != nil {
			return wrapOutput(err, s.name)
		}
		defer unix.Close(pfd)
	}
	var st unix.Stat_t
	if pfd < 0 {
		err = unix.Fstat(c.dir.rootFD, &st)
	} else {
		err = unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	}
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return wrapOutput(err, s.name)
	}
	if err := c.checkKind(s, st.Mode&unix.S_IFMT); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fd, err := openRegular(pfd, base, s.name)
		if err != nil {
			return wrapOutput(err, s.name)
		}
		d, err := c.addFile(fd, c.opener(s.rel))
		if err != nil {
			return wrapOutput(err, s.name)
		}
		result.OutputFiles = append(result.OutputFiles, &repb.OutputFile{Path: s.name, Digest: d.Proto(), IsExecutable: st.Mode&0o111 != 0})
	case unix.S_IFLNK:
		target, err := readlinkat(pfd, base)
		if err != nil {
			return wrapOutput(err, s.name)
		}
		if err := c.checkSymlinkTarget(s.name, target); err != nil {
			return err
		}
		sym := &repb.OutputSymlink{Path: s.name, Target: target}
		switch s.kind {
		case outputAny:
			result.OutputSymlinks = append(result.OutputSymlinks, sym)
		case outputFile:
			result.OutputFileSymlinks = append(result.OutputFileSymlinks, sym)
		case outputDirectory:
			result.OutputDirectorySymlinks = append(result.OutputDirectorySymlinks, sym)
		}
	case unix.S_IFDIR:
		var fd int
		if pfd < 0 {
			fd, err = c.dir.openBeneath(".", unix.O_RDONLY|unix.O_DIRECTORY)
		} else {
			fd, err = unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return wrapOutput(err, s.name)
		}
		tb := &treeBuilder{c: c, seen: make(map[digest.Digest]bool)}
		root, err := tb.walk(fd, s.rel)
		if err != nil {
			return wrapOutput(err, s.name)
		}
		od := &repb.OutputDirectory{Path: s.name}
		if o.format == repb.Command_TREE_ONLY || o.format == repb.Command_TREE_AND_DIRECTORY {
			tree := &repb.Tree{Root: root}
			for i := len(tb.order) - 1; i >= 0; i-- {
				tree.Children = append(tree.Children, tb.order[i])
			}
			data, td, err := digest.FromMessage(tree)
			if err != nil {
				return err
			}
			c.blobs[td] = uploadSource{data: data}
			od.TreeDigest = td.Proto()
			od.IsTopologicallySorted = true
		}
		if o.format == repb.Command_DIRECTORY_ONLY || o.format == repb.Command_TREE_AND_DIRECTORY {
			data, rd, err := digest.FromMessage(root)
			if err != nil {
				return err
			}
			c.blobs[rd] = uploadSource{data: data}
			for dd, b := range tb.dirBlobs {
				c.blobs[dd] = uploadSource{data: b}
			}
			od.RootDirectoryDigest = rd.Proto()
		}
		result.OutputDirectories = append(result.OutputDirectories, od)
	}
	return nil
}

// checkKind refuses, with FAILED_PRECONDITION, an output of the wrong kind for the v2.0 field
// that asked for it, as the ActionResult comments say the server will: a directory (or a
// symlink to one) listed in output_files, a regular file (or a symlink to one) listed in
// output_directories. output_paths accepts every kind. A symlink whose target is absent or
// outside the input root has no kind to check and is reported as a symlink.
//
// An output that is neither a regular file, a directory nor a symlink (a FIFO, a socket, a
// device) cannot be carried by an ActionResult, yet REAPI says an output that existed after the
// action "will be present": it is FAILED_PRECONDITION in every field, never left out.
func (c *outputCollector) checkKind(s outputSpec, mode uint32) error {
	if s.kind == outputAny {
		if mode != unix.S_IFREG && mode != unix.S_IFDIR && mode != unix.S_IFLNK {
			return specialFileError(s.name, mode)
		}
		return nil
	}
	what := "a regular file"
	if mode == unix.S_IFDIR {
		what = "a directory"
	}
	if mode == unix.S_IFLNK {
		fd, err := c.dir.openBeneath(s.rel, unix.O_PATH)
		if err != nil {
			return nil // Dangling, or resolving outside the root.
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		unix.Close(fd)
		if err != nil {
			return nil
		}
		mode = st.Mode & unix.S_IFMT
		what = "a symbolic link to a regular file"
		if mode == unix.S_IFDIR {
			what = "a symbolic link to a directory"
		} else if mode != unix.S_IFREG {
			what = "a symbolic link to a special file"
		}
	} else if mode != unix.S_IFREG && mode != unix.S_IFDIR {
		return specialFileError(s.name, mode)
	}
	switch {
	case s.kind == outputFile && mode != unix.S_IFREG:
		return status.Errorf(codes.FailedPrecondition, "Output file %q is %s, not a regular file (list directories in output_directories, or use output_paths)", s.name, what)
	case s.kind == outputDirectory && mode != unix.S_IFDIR:
		return status.Errorf(codes.FailedPrecondition, "Output directory %q is %s, not a directory (list files in output_files, or use output_paths)", s.name, what)
	}
	return nil
}

// specialFileName names the kind of a file that is not a regular file, directory or symlink.
func specialFileName(mode uint32) string {
	switch mode {
	case unix.S_IFIFO:
		return "a FIFO (named pipe)"
	case unix.S_IFSOCK:
		return "a Unix socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a special file (mode %#o)", mode)
}

// specialFileError is the FAILED_PRECONDITION for an output naming a special file.
func specialFileError(name string, mode uint32) error {
	return status.Errorf(codes.FailedPrecondition, "Output %q is %s: only regular files, directories and symbolic links can be outputs", name, specialFileName(mode))
}

// openRegular opens the regular file base in dirfd for reading. O_NONBLOCK keeps the open
// from blocking if the file was replaced by a FIFO since it was stat'ed; the file is checked
// again once open. name is the output's path, for the error.
func openRegular(dirfd int, base, name string) (int, error) {
	fd, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if mode := st.Mode & unix.S_IFMT; mode != unix.S_IFREG {
		unix.Close(fd)
		return -1, status.Errorf(codes.FailedPrecondition, "Output %q changed to %s while it was collected", name, specialFileName(mode))
	}
	return fd, nil
}

// checkSymlinkTarget refuses an output symlink with an absolute target with
// FAILED_PRECONDITION: the scheduler advertises SymlinkAbsolutePathStrategy DISALLOWED, under
// which REAPI says that "a FAILED_PRECONDITION will be returned". A worker that allows escaping
// input symlinks allows these too.
func (c *outputCollector) checkSymlinkTarget(name, target string) error {
	if !c.absoluteSymlinks && strings.HasPrefix(target, "/") {
		return status.Errorf(codes.FailedPrecondition, "Output symlink %q has the absolute target %q, which this server does not accept (SymlinkAbsolutePathStrategy DISALLOWED): make it relative", name, target)
	}
	return nil
}

func wrapOutput(err error, name string) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return rpcstatus.Wrap(err, "Failed to collect output %q", name)
	}
	return status.Errorf(codes.Internal, "Failed to collect output %q: %v", name, err)
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// opener returns a function that opens rel again beneath the root, never through a symlink
// leading outside it nor through one as its last component.
func (c *outputCollector) opener(rel string) func() (*os.File, error) {
	dir := c.dir
	return func() (*os.File, error) {
		fd, err := dir.openBeneath(rel, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK)
		if err != nil {
			return nil, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			if err == nil {
				err = status.Errorf(codes.FailedPrecondition, "Output %q changed to %s after it was collected", rel, specialFileName(st.Mode&unix.S_IFMT))
			}
			return nil, err
		}
		return os.NewFile(uintptr(fd), rel), nil
	}
}

// addFile hashes the open file fd (closing it) and records it for upload: in memory when it is
// small, otherwise to be opened again with reopen.
func (c *outputCollector) addFile(fd int, reopen func() (*os.File, error)) (digest.Digest, error) {
	f := os.NewFile(uintptr(fd), "output")
	defer f.Close()
	d, data, err := hashFile(f, c.inline)
	if err != nil {
		return digest.Digest{}, err
	}
	if _, ok := c.blobs[d]; ok {
		return d, nil
	}
	if data != nil || d.Size == 0 {
		c.inline += d.Size
		c.blobs[d] = uploadSource{data: data}
		return d, nil
	}
	c.blobs[d] = uploadSource{open: reopen}
	return d, nil
}

// hashFile returns the digest of f, and its content when it is small enough to keep in memory
// given inline bytes already kept.
func hashFile(f *os.File, inline int64) (digest.Digest, []byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return digest.Digest{}, nil, err
	}
	h := sha256.New()
	var w io.Writer = h
	keep := fi.Size() <= inlineOutputLimit && inline+fi.Size() <= inlineOutputBudget
	var mem writerBuffer
	if keep {
		w = io.MultiWriter(h, &mem)
	}
	n, err := io.Copy(w, f)
	if err != nil {
		return digest.Digest{}, nil, err
	}
	d := digest.Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: n}
	if keep && int64(len(mem.b)) == n {
		return d, mem.b, nil
	}
	return d, nil, nil
}

type writerBuffer struct{ b []byte }

func (w *writerBuffer) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// treeBuilder turns an output directory into Directory messages, children after parents
// in reverse order of completion (a topological order).
type treeBuilder struct {
	c        *outputCollector
	seen     map[digest.Digest]bool
	order    []*repb.Directory
	dirBlobs map[digest.Digest][]byte
}

// walk builds the Directory for the open directory fd (closing it); rel is its path beneath
// the root. It returns the Directory; subdirectories are recorded in order and dirBlobs.
func (tb *treeBuilder) walk(fd int, rel string) (*repb.Directory, error) {
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	dir := &repb.Directory{}
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, err
		}
		childRel := filepath.Join(rel, name)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			cfd, err := openRegular(fd, name, childRel)
			if err != nil {
				return nil, err
			}
			d, err := tb.c.addFile(cfd, tb.c.opener(childRel))
			if err != nil {
				return nil, err
			}
			dir.Files = append(dir.Files, &repb.FileNode{Name: name, Digest: d.Proto(), IsExecutable: st.Mode&0o111 != 0})
		case unix.S_IFLNK:
			target, err := readlinkat(fd, name)
			if err != nil {
				return nil, err
			}
			if err := tb.c.checkSymlinkTarget(childRel, target); err != nil {
				return nil, err
			}
			dir.Symlinks = append(dir.Symlinks, &repb.SymlinkNode{Name: name, Target: target})
		case unix.S_IFDIR:
			cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, err
			}
			child, err := tb.walk(cfd, childRel)
			if err != nil {
				return nil, err
			}
			data, d, err := digest.FromMessage(child)
			if err != nil {
				return nil, err
			}
			if !tb.seen[d] {
				tb.seen[d] = true
				tb.order = append(tb.order, child)
				if tb.dirBlobs == nil {
					tb.dirBlobs = make(map[digest.Digest][]byte)
				}
				tb.dirBlobs[d] = data
			}
			dir.Directories = append(dir.Directories, &repb.DirectoryNode{Name: name, Digest: d.Proto()})
		default:
			// Sockets, FIFOs and devices cannot be represented in a Tree; leaving them out
			// would cache a directory that is not what the action made.
			return nil, status.Errorf(codes.FailedPrecondition, "Output directory contains %q, which is %s: only regular files, directories and symbolic links can be outputs", childRel, specialFileName(st.Mode&unix.S_IFMT))
		}
	}
	return dir, nil
}
