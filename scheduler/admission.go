package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/relpath"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// maxMessageBlob bounds the size of an Action, Command or Directory blob the scheduler reads.
const maxMessageBlob = 64 << 20

// findMissingBatch is how many digests go into one FindMissing call.
const findMissingBatch = 10000

// checkedAction is an action whose Action, Command and whole input root are in the CAS.
type checkedAction struct {
	action  *repb.Action
	command *repb.Command
}

// checkAction reads the Action and Command of d and walks its input root, refusing malformed
// digests, names and paths with INVALID_ARGUMENT and missing blobs with FAILED_PRECONDITION and a
// PreconditionFailure listing every one of them as MISSING.
func (s *Scheduler) checkAction(ctx context.Context, d digest.Digest) (*checkedAction, error) {
	var action repb.Action
	if err := s.readMessage(ctx, d, &action, "Action"); err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, rpcstatus.Missing(fmt.Sprintf("Action %s: 1 blob(s) missing from the CAS", d), []digest.Digest{d})
		}
		return nil, err
	}
	cmdDigest, err := digest.FromProto(action.CommandDigest)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Invalid command digest in action %s: %s", d, status.Convert(err).Message())
	}
	rootDigest, err := digest.FromProto(action.InputRootDigest)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Invalid input root digest in action %s: %s", d, status.Convert(err).Message())
	}
	if t := action.Timeout; t != nil && (t.Seconds < 0 || t.Nanos < 0) {
		return nil, status.Errorf(codes.InvalidArgument, "Invalid action %s: negative timeout", d)
	}

	// The Command (one small blob) is read before the input root is walked, on this goroutine:
	// for the small trees of most actions, goroutines cost more than they overlap.
	var (
		command repb.Command
		missing []digest.Digest
	)
	if err := s.readMessage(ctx, cmdDigest, &command, "Command"); err != nil {
		if status.Code(err) != codes.NotFound {
			return nil, err
		}
		missing = append(missing, cmdDigest)
	} else if err := checkCommand(cmdDigest, &command); err != nil {
		return nil, err
	}
	m, err := s.checkTree(ctx, rootDigest)
	if err != nil {
		return nil, err
	}
	missing = append(missing, m...)
	if len(missing) > 0 {
		slices.SortFunc(missing, func(a, b digest.Digest) int { return strings.Compare(a.Hash, b.Hash) })
		missing = slices.Compact(missing)
		return nil, rpcstatus.Missing(fmt.Sprintf("Action %s: %d blob(s) missing from the CAS", d, len(missing)), missing)
	}
	return &checkedAction{action: &action, command: &command}, nil
}

// checkTree walks the input root level by level and returns the digests of the directories and
// files it lacks.
func (s *Scheduler) checkTree(ctx context.Context, root digest.Digest) ([]digest.Digest, error) {
	var missing []digest.Digest
	seenDirs := map[digest.Digest]bool{root: true}
	seenFiles := map[digest.Digest]bool{}
	var files []digest.Digest
	level := []digest.Digest{root}
	for len(level) > 0 {
		dirs := make([]*repb.Directory, len(level))
		absent := make([]bool, len(level))
		read := func(ctx context.Context, i int) error {
			var dir repb.Directory
			if err := s.readMessage(ctx, level[i], &dir, "Directory"); err != nil {
				if status.Code(err) == codes.NotFound {
					absent[i] = true
					return nil
				}
				return err
			}
			dirs[i] = &dir
			return nil
		}
		if len(level) == 1 {
			// One directory (the root, or a chain): no goroutines to start.
			if err := read(ctx, 0); err != nil {
				return nil, err
			}
		} else {
			g, gctx := errgroup.WithContext(ctx)
			g.SetLimit(16)
			for i := range level {
				g.Go(func() error { return read(gctx, i) })
			}
			if err := g.Wait(); err != nil {
				return nil, err
			}
		}
		var next []digest.Digest
		for i, dir := range dirs {
			if absent[i] {
				missing = append(missing, level[i])
				continue
			}
			if err := checkDirectory(level[i], dir); err != nil {
				return nil, err
			}
			for _, f := range dir.Files {
				fd, _ := digest.FromProto(f.Digest) // checked by checkDirectory
				if !seenFiles[fd] && !fd.IsEmpty() {
					seenFiles[fd] = true
					files = append(files, fd)
				}
			}
			for _, sub := range dir.Directories {
				sd, _ := digest.FromProto(sub.Digest)
				if !seenDirs[sd] {
					seenDirs[sd] = true
					next = append(next, sd)
				}
			}
		}
		level = next
	}
	for len(files) > 0 {
		n := min(len(files), findMissingBatch)
		m, err := s.cas.FindMissing(ctx, files[:n])
		if err != nil {
			return nil, rpcstatus.Wrap(err, "Failed to look up input files")
		}
		missing = append(missing, m...)
		files = files[n:]
	}
	return missing, nil
}

// readMessage reads blob d from the CAS and unmarshals it into m.
func (s *Scheduler) readMessage(ctx context.Context, d digest.Digest, m proto.Message, what string) error {
	if d.Size > maxMessageBlob {
		return status.Errorf(codes.InvalidArgument, "%s %s is larger than %d bytes", what, d, maxMessageBlob)
	}
	var b []byte
	if !d.IsEmpty() {
		r, err := s.cas.Get(ctx, d, 0, 0)
		if err != nil {
			return rpcstatus.Wrap(err, "Failed to read %s %s", what, d)
		}
		b, err = readExactly(r, d.Size)
		r.Close()
		if err != nil {
			return rpcstatus.Wrap(err, "Failed to read %s %s", what, d)
		}
		if int64(len(b)) != d.Size {
			return status.Errorf(codes.Internal, "Failed to read %s %s: got %d bytes", what, d, len(b))
		}
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return status.Errorf(codes.InvalidArgument, "Blob %s is not a valid %s: %v", d, what, err)
	}
	return nil
}

// readExactly reads r to its end into one buffer of size bytes, allocated once (io.ReadAll
// would start small and grow), and returns what it read: fewer bytes than size if r ends early,
// size+1 if r holds more, so that the caller sees either as a wrong length.
func readExactly(r io.Reader, size int64) ([]byte, error) {
	b := make([]byte, size+1)
	n, err := io.ReadFull(r, b)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil
	}
	return b[:n], err
}

// checkDirectory validates the entries of one input root directory.
func checkDirectory(d digest.Digest, dir *repb.Directory) error {
	check := func(kind, name string) error {
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return status.Errorf(codes.InvalidArgument, "Invalid %s name %q in input directory %s", kind, name, d)
		}
		return nil
	}
	for _, f := range dir.Files {
		if err := check("file", f.Name); err != nil {
			return err
		}
		if _, err := digest.FromProto(f.Digest); err != nil {
			return status.Errorf(codes.InvalidArgument, "Invalid digest of file %q in input directory %s: %s", f.Name, d, status.Convert(err).Message())
		}
	}
	for _, sub := range dir.Directories {
		if err := check("directory", sub.Name); err != nil {
			return err
		}
		if _, err := digest.FromProto(sub.Digest); err != nil {
			return status.Errorf(codes.InvalidArgument, "Invalid digest of directory %q in input directory %s: %s", sub.Name, d, status.Convert(err).Message())
		}
	}
	for _, l := range dir.Symlinks {
		if err := check("symlink", l.Name); err != nil {
			return err
		}
	}
	return nil
}

// checkCommand validates a Command's paths: output paths and the working directory must be
// relative and stay inside the input root.
func checkCommand(d digest.Digest, c *repb.Command) error {
	if len(c.Arguments) == 0 {
		return status.Errorf(codes.InvalidArgument, "Command %s has no arguments", d)
	}
	// REAPI: "If a property is not recognized by the server, the server will return an
	// INVALID_ARGUMENT." buildfleet recognizes none.
	if len(c.OutputNodeProperties) > 0 {
		return status.Errorf(codes.InvalidArgument, "Command %s asks for output node property %q, which this server does not recognize", d, c.OutputNodeProperties[0])
	}
	// REAPI: output paths "MUST NOT include a trailing slash, nor a leading slash"; buildfleet
	// accepts only canonical relative paths (relpath), so that one output has one spelling and
	// stays inside the action's directory. The empty path is the working directory itself (the
	// REAPI allows it for output directories; the working directory "" is the input root); an
	// output file or output path must name something, as the worker requires too.
	check := func(kind, p string) error {
		if p == "" && (kind == "output directory" || kind == "working directory") {
			return nil
		}
		if err := relpath.Check(p); err != nil {
			return status.Errorf(codes.InvalidArgument, "Invalid %s %q in command %s: %v", kind, p, d, err)
		}
		return nil
	}
	for _, p := range c.OutputFiles {
		if err := check("output file", p); err != nil {
			return err
		}
	}
	for _, p := range c.OutputDirectories {
		if err := check("output directory", p); err != nil {
			return err
		}
	}
	for _, p := range c.OutputPaths {
		if err := check("output path", p); err != nil {
			return err
		}
	}
	if err := check("working directory", c.WorkingDirectory); err != nil {
		return err
	}
	return nil
}
