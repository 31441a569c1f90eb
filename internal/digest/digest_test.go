package digest_test

import (
	"testing"

	"github.com/buildfleet/buildfleet/internal/digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const helloHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

func TestFromBytes(t *testing.T) {
	if got := digest.FromBytes([]byte("hello")); got != (digest.Digest{Hash: helloHash, Size: 5}) {
		t.Fatalf("FromBytes(hello) = %v", got)
	}
	if digest.Empty.Hash != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" || digest.Empty.Size != 0 {
		t.Fatalf("Empty = %v", digest.Empty)
	}
}

func TestNewRejectsBadDigests(t *testing.T) {
	for _, tc := range []struct {
		name string
		hash string
		size int64
	}{
		{"short", "abc", 3},
		{"upper case", "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824", 5},
		{"non hex", "zz" + helloHash[2:], 5},
		{"negative size", helloHash, -1},
		{"sha1 length", "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := digest.New(tc.hash, tc.size)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("New(%q, %d) = %v, want INVALID_ARGUMENT", tc.hash, tc.size, err)
			}
		})
	}
	if _, err := digest.FromProto(nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FromProto(nil) = %v", err)
	}
}

func TestResourceNames(t *testing.T) {
	d := digest.Digest{Hash: helloHash, Size: 5}
	for _, tc := range []struct {
		name       string
		write      bool
		instance   string
		compressor digest.Compressor
		wantErr    bool
	}{
		{name: "blobs/" + helloHash + "/5", instance: "", compressor: digest.Identity},
		{name: "main/blobs/" + helloHash + "/5", instance: "main", compressor: digest.Identity},
		{name: "a/b/compressed-blobs/zstd/" + helloHash + "/5", instance: "a/b", compressor: digest.Zstd},
		{name: "main/uploads/u-1/blobs/" + helloHash + "/5", write: true, instance: "main", compressor: digest.Identity},
		{name: "uploads/u-1/blobs/" + helloHash + "/5/some/metadata", write: true, compressor: digest.Identity},
		{name: "uploads/u/compressed-blobs/zstd/" + helloHash + "/5", write: true, compressor: digest.Zstd},
		{name: "blobs/" + helloHash + "/5/extra", wantErr: true},
		{name: "blobs/" + helloHash, wantErr: true},
		{name: "blobs/" + helloHash + "/x", wantErr: true},
		{name: "blobs/" + helloHash + "/+5", wantErr: true},
		{name: "blobs/" + helloHash + "/05", wantErr: true},
		{name: "uploads/u/blobs/" + helloHash + "/+5", write: true, wantErr: true},
		{name: "uploads/u/blobs/" + helloHash + "/005", write: true, wantErr: true},
		{name: "blobs/" + digest.Empty.Hash + "/-0", wantErr: true},
		{name: "compressed-blobs/lz4/" + helloHash + "/5", wantErr: true},
		{name: "../blobs/" + helloHash + "/5", wantErr: true},
		{name: "main/blobs/" + helloHash + "/5", write: true, wantErr: true},
		{name: "", wantErr: true},
	} {
		var rn digest.ResourceName
		var err error
		if tc.write {
			rn, err = digest.ParseWriteResourceName(tc.name)
		} else {
			rn, err = digest.ParseReadResourceName(tc.name)
		}
		if tc.wantErr {
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("parse(%q) = %+v, %v; want INVALID_ARGUMENT", tc.name, rn, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parse(%q): %v", tc.name, err)
			continue
		}
		if rn.Instance != tc.instance || rn.Compressor != tc.compressor || rn.Digest != d {
			t.Errorf("parse(%q) = %+v", tc.name, rn)
		}
	}
}

func TestResourceNameRoundTrip(t *testing.T) {
	d := digest.FromBytes([]byte("round trip"))
	for _, inst := range []string{"", "x", "team/ci"} {
		rn, err := digest.ParseReadResourceName(digest.ReadResourceName(inst, d, digest.Identity))
		if err != nil || rn.Instance != inst || rn.Digest != d {
			t.Errorf("read round trip for %q: %+v, %v", inst, rn, err)
		}
		rn, err = digest.ParseWriteResourceName(digest.WriteResourceName(inst, d, digest.Zstd))
		if err != nil || rn.Instance != inst || rn.Digest != d || rn.Compressor != digest.Zstd || rn.UploadID == "" {
			t.Errorf("write round trip for %q: %+v, %v", inst, rn, err)
		}
	}
}

// TestNewChecksEveryByte puts every byte value at every position of a valid hash: New accepts
// exactly the lower-case hex digits, and refuses the rest with the same message as ever.
func TestNewChecksEveryByte(t *testing.T) {
	for pos := 0; pos < digest.HashLength; pos++ {
		for c := 0; c < 256; c++ {
			h := []byte(helloHash)
			h[pos] = byte(c)
			_, err := digest.New(string(h), 5)
			valid := c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
			if valid && err != nil {
				t.Fatalf("New with byte %#x at %d: %v", c, pos, err)
			}
			if !valid {
				want := "Invalid digest " + string(h) + "/5: hash is not lower-case hexadecimal"
				if s := status.Convert(err); s.Code() != codes.InvalidArgument || s.Message() != want {
					t.Fatalf("New with byte %#x at %d: %v, want INVALID_ARGUMENT %q", c, pos, err, want)
				}
			}
		}
	}
	for _, tc := range []struct {
		hash string
		size int64
		want string
	}{
		{"abc", 3, "Invalid digest abc/3: hash has length 3, want 64 (SHA-256)"},
		{"ABC", -1, "Invalid digest ABC/-1: hash has length 3, want 64 (SHA-256)"},
		{helloHash, -1, "Invalid digest " + helloHash + "/-1: negative size"},
		{"Z" + helloHash[1:], -1, "Invalid digest Z" + helloHash[1:] + "/-1: hash is not lower-case hexadecimal"},
	} {
		if _, err := digest.New(tc.hash, tc.size); status.Convert(err).Message() != tc.want {
			t.Errorf("New(%q, %d) = %v, want %q", tc.hash, tc.size, err, tc.want)
		}
	}
}

// BenchmarkNew validates a valid digest, the common case of FindMissingBlobs.
func BenchmarkNew(b *testing.B) {
	for i := 0; i < b.N; i++ {
		if _, err := digest.New(helloHash, 5); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNewAcceptsExactlyLowerHex puts every byte value at every position of a valid hash and
// compares New's verdict with a byte-by-byte rule: the word-at-a-time check must not let a
// neighbouring byte or a carry hide a bad one.
func TestNewAcceptsExactlyLowerHex(t *testing.T) {
	lowerHex := func(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }
	for pos := range digest.HashLength {
		for c := range 256 {
			h := []byte(helloHash)
			h[pos] = byte(c)
			if _, err := digest.New(string(h), 5); (err == nil) != lowerHex(byte(c)) {
				t.Fatalf("New with byte %#x at %d: %v", c, pos, err)
			}
		}
	}
}
