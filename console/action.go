package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/scheduler"
)

// Bounds of what a page reads from the CAS.
const (
	// maxShownBytes is how much of a file, stdout or stderr a page shows.
	maxShownBytes = 256 << 10
	// maxHexBytes is how much of a binary file a page shows as a hex dump.
	maxHexBytes = 4 << 10
	// maxMessageBytes bounds an Action, Command or Directory read to be decoded.
	maxMessageBytes = 4 << 20
	// maxListed bounds the entries of a directory listing.
	maxListed = 2000
	// readTimeout bounds the CAS reads of one page.
	readTimeout = 10 * time.Second
)

// actionRef is the action a page is about: its digest and instance name.
type actionRef struct {
	Instance string
	Digest   digest.Digest
}

// parseActionRef reads {hash}/{size} and ?instance= of r.
func parseActionRef(r *http.Request) (actionRef, error) {
	size, err := strconv.ParseInt(r.PathValue("size"), 10, 64)
	if err != nil {
		return actionRef{}, fmt.Errorf("size %q is not a number", r.PathValue("size"))
	}
	d, err := digest.New(r.PathValue("hash"), size)
	if err != nil {
		return actionRef{}, fmt.Errorf("%s", status.Convert(err).Message())
	}
	return actionRef{Instance: r.URL.Query().Get("instance"), Digest: d}, nil
}

// blobText is a blob (or inline bytes) as a page shows it.
type blobText struct {
	Size int64
	// Text is the start of the contents when they are UTF-8 text; Hex a hex dump of the start
	// otherwise.
	Text, Hex string
	// Truncated reports that only the start is shown.
	Truncated bool
	// Err says why the contents could not be read.
	Err string
	// Missing reports that the CAS does not hold the blob.
	Missing bool
}

// Empty reports whether there is nothing to show.
func (b blobText) Empty() bool { return b.Size == 0 && b.Err == "" }

// showBytes renders the start of a blob of total size size.
func showBytes(b []byte, size int64) blobText {
	out := blobText{Size: size, Truncated: int64(len(b)) < size}
	t := b
	if out.Truncated {
		t = trimPartialRune(b)
	}
	if utf8.Valid(t) && bytes.IndexByte(t, 0) < 0 {
		out.Text = string(t)
		return out
	}
	if len(b) > maxHexBytes {
		b = b[:maxHexBytes]
		out.Truncated = true
	}
	out.Hex = hexDump(b)
	return out
}

// trimPartialRune drops an incomplete UTF-8 sequence cut at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			break
		}
	}
	return b
}

// hexDump renders b as lines of offset, 16 hex bytes and their printable characters.
func hexDump(b []byte) string {
	var sb strings.Builder
	for off := 0; off < len(b); off += 16 {
		line := b[off:min(off+16, len(b))]
		fmt.Fprintf(&sb, "%08x  ", off)
		for i := 0; i < 16; i++ {
			if i < len(line) {
				fmt.Fprintf(&sb, "%02x ", line[i])
			} else {
				sb.WriteString("   ")
			}
			if i == 7 {
				sb.WriteByte(' ')
			}
		}
		sb.WriteString(" |")
		for _, c := range line {
			if c < 0x20 || c > 0x7e {
				c = '.'
			}
			sb.WriteByte(c)
		}
		sb.WriteString("|\n")
	}
	return sb.String()
}

// readBlob reads the start of blob d from the CAS for showing.
func (c *Console) readBlob(ctx context.Context, d digest.Digest) blobText {
	if d.Size == 0 {
		return blobText{}
	}
	rc, err := c.opts.CAS.Get(ctx, d, 0, maxShownBytes)
	if err != nil {
		return blobText{Size: d.Size, Err: blobError(d, err), Missing: status.Code(err) == codes.NotFound}
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxShownBytes))
	if err != nil {
		return blobText{Size: d.Size, Err: blobError(d, err)}
	}
	return showBytes(b, d.Size)
}

// blobError explains a failed CAS read.
func blobError(d digest.Digest, err error) string {
	if status.Code(err) == codes.NotFound {
		return "Blob " + d.String() + " is not in the CAS (never uploaded with this size, or evicted)."
	}
	return "Reading blob " + d.String() + " failed: " + status.Convert(err).Message()
}

// readMessage reads and decodes a proto message from the CAS.
func (c *Console) readMessage(ctx context.Context, d digest.Digest, m proto.Message) error {
	if d.Size > maxMessageBytes {
		return fmt.Errorf("blob %s is too large to show (%s)", d, humanBytes(d.Size))
	}
	rc, err := c.opts.CAS.Get(ctx, d, 0, 0)
	if err != nil {
		return fmt.Errorf("%s", blobError(d, err))
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxMessageBytes+1))
	if err != nil {
		return fmt.Errorf("%s", blobError(d, err))
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return undecodableError{fmt.Sprintf("blob %s does not decode as %s: %v", d, m.ProtoReflect().Descriptor().Name(), err)}
	}
	return nil
}

// undecodableError is readMessage's error for a blob that is not the message asked for.
type undecodableError struct{ msg string }

func (e undecodableError) Error() string { return e.msg }

// phase is one segment of an execution timeline.
type phase struct {
	Name       string
	Start, End time.Time
	// Offset and Width place the segment in percent of the whole timeline.
	Offset, Width float64
}

// Duration is the phase's length.
func (p phase) Duration() time.Duration { return p.End.Sub(p.Start) }

// timeline turns ExecutedActionMetadata into phases: queued, worker start, input fetch,
// execution, output upload (those with both timestamps).
func timeline(md *repb.ExecutedActionMetadata) []phase {
	if md == nil {
		return nil
	}
	raw := []phase{
		{Name: "queued", Start: tsTime(md.QueuedTimestamp), End: tsTime(md.WorkerStartTimestamp)},
		{Name: "worker start", Start: tsTime(md.WorkerStartTimestamp), End: tsTime(md.InputFetchStartTimestamp)},
		{Name: "input fetch", Start: tsTime(md.InputFetchStartTimestamp), End: tsTime(md.InputFetchCompletedTimestamp)},
		{Name: "execution", Start: tsTime(md.ExecutionStartTimestamp), End: tsTime(md.ExecutionCompletedTimestamp)},
		{Name: "output upload", Start: tsTime(md.OutputUploadStartTimestamp), End: tsTime(md.OutputUploadCompletedTimestamp)},
		{Name: "worker done", Start: tsTime(md.OutputUploadCompletedTimestamp), End: tsTime(md.WorkerCompletedTimestamp)},
	}
	var out []phase
	var first, last time.Time
	for _, p := range raw {
		if p.Start.IsZero() || p.End.IsZero() || p.End.Before(p.Start) {
			continue
		}
		if first.IsZero() || p.Start.Before(first) {
			first = p.Start
		}
		if p.End.After(last) {
			last = p.End
		}
		out = append(out, p)
	}
	total := last.Sub(first)
	for i := range out {
		if total > 0 {
			out[i].Offset = float64(out[i].Start.Sub(first)) * 100 / float64(total)
			out[i].Width = max(float64(out[i].Duration())*100/float64(total), 0.5)
		}
	}
	return out
}

// actionData is the action page.
type actionData struct {
	Ref        actionRef
	Executions []scheduler.ExecutionRecord
	// Latest is the execution whose result is shown (nil if none is known).
	Latest    *scheduler.ExecutionRecord
	Result    *repb.ActionResult
	FromCache bool
	Stdout    blobText
	Stderr    blobText
	Timeline  []phase
	Action    *repb.Action
	ActionErr string
	Command   *repb.Command
	CmdErr    string
	Root      *dirListing
	Live      bool
}

// instanceFor picks the instance of an action page without ?instance=: the newest known
// execution's that the viewer may read, else "".
func instanceFor(recs []scheduler.ExecutionRecord, v *viewer) string {
	for _, e := range recs {
		if v.CanRead(e.Instance) {
			return e.Instance
		}
	}
	return ""
}

func (c *Console) action(r *http.Request, v *viewer) view {
	ref, err := parseActionRef(r)
	if err != nil {
		return errorView(http.StatusBadRequest, "Bad action address", err.Error())
	}
	recs := c.opts.Scheduler.Executions(ref.Digest)
	if !r.URL.Query().Has("instance") {
		ref.Instance = instanceFor(recs, v)
	}
	if !v.CanRead(ref.Instance) {
		return errorView(http.StatusForbidden, "Not allowed", "Your token may not read instance "+instanceLabel(ref.Instance)+".")
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	d := actionData{Ref: ref}
	for _, e := range recs {
		if e.Instance != ref.Instance {
			continue
		}
		d.Executions = append(d.Executions, e)
		if e.Outcome == scheduler.OutcomeQueued || e.Outcome == scheduler.OutcomeExecuting {
			d.Live = true
		} else if d.Latest == nil {
			latest := e
			d.Latest = &latest
			d.Result = e.Result
		}
	}
	if d.Result == nil && c.opts.ActionCache != nil {
		if res, err := c.opts.ActionCache.Get(ctx, ref.Instance, ref.Digest); err == nil {
			d.Result, d.FromCache = res, true
		}
	}
	if res := d.Result; res != nil {
		d.Stdout = c.output(ctx, res.StdoutRaw, res.StdoutDigest)
		d.Stderr = c.output(ctx, res.StderrRaw, res.StderrDigest)
		d.Timeline = timeline(res.ExecutionMetadata)
	}
	var act repb.Action
	notAction := false
	if err := c.readMessage(ctx, ref.Digest, &act); err != nil {
		d.ActionErr = err.Error()
		notAction = errors.As(err, new(undecodableError))
	} else if act.CommandDigest == nil {
		// Every Action names its Command; the empty blob and most other blobs decode as an
		// empty or meaningless Action.
		notAction = true
		d.ActionErr = "Blob " + ref.Digest.String() + " is not an Action: it names no Command."
	} else {
		d.Action = &act
		if cd, err := digest.FromProto(act.CommandDigest); err != nil {
			d.CmdErr = "The Action has no valid command digest."
		} else {
			var cmd repb.Command
			if err := c.readMessage(ctx, cd, &cmd); err != nil {
				d.CmdErr = err.Error()
			} else {
				d.Command = &cmd
			}
		}
		if rd, err := digest.FromProto(act.InputRootDigest); err == nil {
			d.Root = c.listDir(ctx, rd, "")
		}
	}
	if len(d.Executions) == 0 && d.Result == nil && d.Action == nil {
		if notAction {
			return errorView(http.StatusNotFound, "Not an Action", d.ActionErr)
		}
		return errorView(http.StatusNotFound, "Unknown action", "Neither the scheduler, the action cache nor the CAS know action "+ref.Digest.String()+" in instance "+instanceLabel(ref.Instance)+".")
	}
	return view{template: "action", title: "Action " + shortDigest(ref.Digest), nav: "builds", live: d.Live, data: d}
}

// output renders stdout or stderr: inline bytes, else the blob.
func (c *Console) output(ctx context.Context, raw []byte, d *repb.Digest) blobText {
	if len(raw) > 0 {
		b := raw[:min(len(raw), maxShownBytes)]
		return showBytes(b, int64(len(raw)))
	}
	dd, err := digest.FromProto(d)
	if err != nil || d == nil {
		return blobText{}
	}
	return c.readBlob(ctx, dd)
}

// dirEntry is one entry of an input directory listing.
type dirEntry struct {
	Name       string
	Path       string
	Dir        bool
	Executable bool
	Symlink    string
	Digest     digest.Digest
}

// dirListing is one directory of an input root.
type dirListing struct {
	Path      string
	Entries   []dirEntry
	Truncated bool
	Err       string
}

// listDir reads directory d at path (relative to the input root) and lists at most maxListed
// of its entries.
func (c *Console) listDir(ctx context.Context, d digest.Digest, p string) *dirListing {
	l := &dirListing{Path: p}
	var dir repb.Directory
	if err := c.readMessage(ctx, d, &dir); err != nil {
		l.Err = err.Error()
		return l
	}
	l.Entries = entriesOf(&dir, p)
	if len(l.Entries) > maxListed {
		l.Entries, l.Truncated = l.Entries[:maxListed], true
	}
	return l
}

// entriesOf returns every entry of dir, at path p: directories first, then by name.
func entriesOf(dir *repb.Directory, p string) []dirEntry {
	var out []dirEntry
	add := func(e dirEntry) {
		e.Path = path.Join(p, e.Name)
		out = append(out, e)
	}
	for _, n := range dir.Directories {
		dd, _ := digest.FromProto(n.Digest)
		add(dirEntry{Name: n.Name, Dir: true, Digest: dd})
	}
	for _, n := range dir.Files {
		dd, _ := digest.FromProto(n.Digest)
		add(dirEntry{Name: n.Name, Executable: n.IsExecutable, Digest: dd})
	}
	for _, n := range dir.Symlinks {
		add(dirEntry{Name: n.Name, Symlink: n.Target})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Dir != out[j].Dir {
			return out[i].Dir
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// entryNamed finds the entry called name among all entries of dir (at path p), not only the
// listed ones.
func entryNamed(dir *repb.Directory, p, name string) (dirEntry, bool) {
	for _, e := range entriesOf(dir, p) {
		if e.Name == name {
			return e, true
		}
	}
	return dirEntry{}, false
}

// inputData is a page of an action's input root: a directory listing or a file.
type inputData struct {
	Ref   actionRef
	Path  string
	Crumb []crumb
	Dir   *dirListing
	File  *dirEntry
	Blob  blobText
}

// crumb is one link of the path above an input page.
type crumb struct{ Name, Path string }

func (c *Console) input(r *http.Request, v *viewer) view {
	ref, err := parseActionRef(r)
	if err != nil {
		return errorView(http.StatusBadRequest, "Bad action address", err.Error())
	}
	if !v.CanRead(ref.Instance) {
		return errorView(http.StatusForbidden, "Not allowed", "Your token may not read instance "+instanceLabel(ref.Instance)+".")
	}
	p := strings.Trim(path.Clean("/"+r.PathValue("path")), "/")
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	var act repb.Action
	if err := c.readMessage(ctx, ref.Digest, &act); err != nil {
		return errorView(http.StatusNotFound, "Unknown action", err.Error())
	}
	d := inputData{Ref: ref, Path: p}
	cur, err := digest.FromProto(act.InputRootDigest)
	if err != nil {
		return errorView(http.StatusNotFound, "No input root", "The Action has no valid input root digest.")
	}
	var parts []string
	if p != "" {
		parts = strings.Split(p, "/")
	}
	for i, name := range parts {
		// The whole Directory is searched: a listing shows only its first maxListed entries.
		var dir repb.Directory
		if err := c.readMessage(ctx, cur, &dir); err != nil {
			return errorView(http.StatusNotFound, "Unreadable directory", err.Error())
		}
		d.Crumb = append(d.Crumb, crumb{Name: name, Path: strings.Join(parts[:i+1], "/")})
		found, ok := entryNamed(&dir, strings.Join(parts[:i], "/"), name)
		switch {
		case !ok:
			return errorView(http.StatusNotFound, "No such input", "The input root has no "+strings.Join(parts[:i+1], "/")+".")
		case found.Dir:
			cur = found.Digest
		case i == len(parts)-1:
			d.File = &found
			if found.Symlink == "" {
				d.Blob = c.readBlob(ctx, found.Digest)
			}
			return view{template: "input", title: p, nav: "builds", data: d}
		default:
			return errorView(http.StatusNotFound, "No such input", strings.Join(parts[:i+1], "/")+" is not a directory.")
		}
	}
	d.Dir = c.listDir(ctx, cur, p)
	title := "/" + p
	return view{template: "input", title: "Inputs " + title, nav: "builds", data: d}
}

// blobData is the page of one blob (an output file, stdout, stderr).
type blobData struct {
	Instance string
	Digest   digest.Digest
	Name     string
	Blob     blobText
}

func (c *Console) blob(r *http.Request, v *viewer) view {
	ref, err := parseActionRef(r)
	if err != nil {
		return errorView(http.StatusBadRequest, "Bad blob address", err.Error())
	}
	if !v.CanRead(ref.Instance) {
		return errorView(http.StatusForbidden, "Not allowed", "Your token may not read instance "+instanceLabel(ref.Instance)+".")
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	name := r.URL.Query().Get("name")
	if name == "" {
		name = ref.Digest.String()
	}
	d := blobData{Instance: ref.Instance, Digest: ref.Digest, Name: name, Blob: c.readBlob(ctx, ref.Digest)}
	if d.Blob.Missing {
		return errorView(http.StatusNotFound, "Not in the CAS", d.Blob.Err)
	}
	return view{template: "blob", title: name, nav: "builds", data: d}
}
