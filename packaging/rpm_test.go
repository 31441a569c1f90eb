package packaging_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// RPM header tags the tests read (rpm's lib/rpmtag.h).
const (
	rpmTagFileModes   = 1030
	rpmTagRequireName = 1049
	rpmTagDirIndexes  = 1116
	rpmTagBaseNames   = 1117
	rpmTagDirNames    = 1118
)

// The .rpm owns /etc/buildfleet (rpm lists no parent directories by itself, and would leave it
// behind on removal), owns no system directory such as /usr/local/bin, and requires shadow-utils,
// whose useradd its postinstall script runs.
func TestRPMOwnsItsDirectoryAndNeedsUseradd(t *testing.T) {
	needSnapshot(t)
	h := rpmHeader(t, filepath.Join(dist, "buildfleet_"+meta.Version+"_"+hostArch()+".rpm"))
	if !slices.Contains(h.strings[rpmTagRequireName], "shadow-utils") {
		t.Errorf("rpm requires %v, want shadow-utils (useradd)", h.strings[rpmTagRequireName])
	}
	dirs, bases, idx, modes := h.strings[rpmTagDirNames], h.strings[rpmTagBaseNames], h.ints[rpmTagDirIndexes], h.ints[rpmTagFileModes]
	if len(bases) != len(idx) || len(bases) != len(modes) {
		t.Fatalf("rpm file list: %d names, %d dir indexes, %d modes", len(bases), len(idx), len(modes))
	}
	listed := map[string]int64{}
	for i, b := range bases {
		listed[dirs[idx[i]]+b] = modes[i]
	}
	if m, ok := listed["/etc/buildfleet"]; !ok || m&0o170000 != 0o040000 {
		t.Errorf("rpm does not list the directory /etc/buildfleet (mode %o, listed %v): %v", m, ok, listed)
	}
	for _, sys := range []string{"/usr", "/usr/local", "/usr/local/bin", "/etc", "/usr/lib/systemd/system"} {
		if _, ok := listed[sys]; ok {
			t.Errorf("rpm owns the system directory %s", sys)
		}
	}
}

// rpmFields are the string and integer tags of an RPM's main header.
type rpmFields struct {
	strings map[int][]string
	ints    map[int][]int64
}

// rpmHeader parses the main header of the .rpm at path: the 96-byte lead, the signature header
// (padded to 8 bytes), then the main header, each a magic, an index of (tag, type, offset,
// count) entries and a data store.
func rpmHeader(t *testing.T, path string) rpmFields {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := 96
	section := func() (index, data []byte) {
		if len(b) < off+16 || !bytes.Equal(b[off:off+3], []byte{0x8e, 0xad, 0xe8}) {
			t.Fatalf("%s: no RPM header at offset %d", path, off)
		}
		n := int(binary.BigEndian.Uint32(b[off+8:]))
		size := int(binary.BigEndian.Uint32(b[off+12:]))
		start := off + 16
		if len(b) < start+16*n+size {
			t.Fatalf("%s: header at %d truncated", path, off)
		}
		off = start + 16*n + size
		return b[start : start+16*n], b[start+16*n : off]
	}
	section() // the signature
	off = (off + 7) &^ 7
	index, data := section()
	f := rpmFields{strings: map[int][]string{}, ints: map[int][]int64{}}
	for i := 0; i < len(index); i += 16 {
		tag := int(binary.BigEndian.Uint32(index[i:]))
		typ := binary.BigEndian.Uint32(index[i+4:])
		at := int(binary.BigEndian.Uint32(index[i+8:]))
		count := int(binary.BigEndian.Uint32(index[i+12:]))
		switch typ {
		case 3: // INT16
			for j := 0; j < count; j++ {
				f.ints[tag] = append(f.ints[tag], int64(binary.BigEndian.Uint16(data[at+2*j:])))
			}
		case 4: // INT32
			for j := 0; j < count; j++ {
				f.ints[tag] = append(f.ints[tag], int64(binary.BigEndian.Uint32(data[at+4*j:])))
			}
		case 6, 8, 9: // STRING, STRING_ARRAY, I18NSTRING
			for j := 0; j < count; j++ {
				end := bytes.IndexByte(data[at:], 0)
				f.strings[tag] = append(f.strings[tag], string(data[at:at+end]))
				at += end + 1
			}
		}
	}
	return f
}
