// Package digest holds the SHA-256 content digests used across buildfleet: validation of REAPI
// Digest messages, hashing of bytes and messages, and ByteStream resource names.
package digest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// HashLength is the length of a hex-encoded SHA-256 hash.
const HashLength = 2 * sha256.Size

// Digest identifies a blob by its lower-case hex SHA-256 hash and its size in bytes.
type Digest struct {
	Hash string
	Size int64
}

// Empty is the digest of the empty blob, which every store holds implicitly.
var Empty = FromBytes(nil)

// FromBytes returns the digest of b.
func FromBytes(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest{Hash: hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

// FromMessage serializes m deterministically and returns its bytes and digest.
func FromMessage(m proto.Message) ([]byte, Digest, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, Digest{}, status.Errorf(codes.Internal, "Failed to marshal %T: %v", m, err)
	}
	return b, FromBytes(b), nil
}

// New validates hash and size and returns the digest. Errors carry INVALID_ARGUMENT.
func New(hash string, size int64) (Digest, error) {
	if len(hash) == HashLength && size >= 0 && isLowerHex(hash) {
		return Digest{Hash: hash, Size: size}, nil // The fast path: every valid digest.
	}
	if len(hash) != HashLength {
		return Digest{}, status.Errorf(codes.InvalidArgument, "Invalid digest %s/%d: hash has length %d, want %d (SHA-256)", hash, size, len(hash), HashLength)
	}
	if !isLowerHex(hash) {
		return Digest{}, status.Errorf(codes.InvalidArgument, "Invalid digest %s/%d: hash is not lower-case hexadecimal", hash, size)
	}
	return Digest{}, status.Errorf(codes.InvalidArgument, "Invalid digest %s/%d: negative size", hash, size)
}

// Per-byte masks and addends of isLowerHex's eight-bytes-at-a-time check. Once a word's high
// bits are known clear, every byte is below 0x80 and every addend at most 0x50, so no byte's sum
// carries into the next byte.
const (
	lanes     = 0x0101010101010101
	highBits  = 0x80 * lanes
	geDigit0  = (0x80 - '0') * lanes     // Sets a byte's high bit when the byte is >= '0'.
	gtDigit9  = (0x80 - '9' - 1) * lanes // ... when it is > '9'.
	geLetterA = (0x80 - 'a') * lanes     // ... when it is >= 'a'.
	gtLetterF = (0x80 - 'f' - 1) * lanes // ... when it is > 'f'.
)

// isLowerHex reports whether s consists of lower-case hexadecimal digits only. It checks eight
// bytes a step with word arithmetic, without a branch or table lookup per byte: FindMissingBlobs
// validates tens of thousands of hashes per call.
func isLowerHex(s string) bool {
	var bad uint64
	for ; len(s) >= 8; s = s[8:] {
		x := uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
			uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
		valid := (x+geDigit0)&^(x+gtDigit9) | (x+geLetterA)&^(x+gtLetterF)
		bad |= (x | ^valid) & highBits // A byte with its high bit set is never a digit.
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return bad == 0
}

// FromProto validates a REAPI Digest. A nil digest is INVALID_ARGUMENT.
func FromProto(d *repb.Digest) (Digest, error) {
	if d == nil {
		return Digest{}, status.Error(codes.InvalidArgument, "Missing digest")
	}
	return New(d.GetHash(), d.GetSizeBytes())
}

// CheckFunction accepts an unset digest function (which clients such as Pants leave unset) and
// SHA-256, and refuses every other with INVALID_ARGUMENT.
func CheckFunction(f repb.DigestFunction_Value) error {
	if f == repb.DigestFunction_UNKNOWN || f == repb.DigestFunction_SHA256 {
		return nil
	}
	return status.Errorf(codes.InvalidArgument, "Unsupported digest function %s: this server supports SHA256 only", f)
}

// Proto returns the REAPI form of d.
func (d Digest) Proto() *repb.Digest {
	return &repb.Digest{Hash: d.Hash, SizeBytes: d.Size}
}

// String returns "hash/size", the form used in resource names and logs.
func (d Digest) String() string {
	return d.Hash + "/" + strconv.FormatInt(d.Size, 10)
}

// IsEmpty reports whether d is the digest of the empty blob.
func (d Digest) IsEmpty() bool { return d == Empty }

// Parse parses "hash/size"; the size must be written in canonical decimal (no sign, no
// leading zeros), or the error is INVALID_ARGUMENT.
func Parse(s string) (Digest, error) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return Digest{}, status.Errorf(codes.InvalidArgument, "Invalid digest %q: want HASH/SIZE", s)
	}
	size, err := strconv.ParseInt(s[i+1:], 10, 64)
	if err != nil {
		return Digest{}, status.Errorf(codes.InvalidArgument, "Invalid digest %q: size is not a number", s)
	}
	// One spelling per size: "+16" or "016" would name the same blob under another resource name.
	if strconv.FormatInt(size, 10) != s[i+1:] {
		return Digest{}, status.Errorf(codes.InvalidArgument, "Invalid digest %q: size is not a canonical decimal number", s)
	}
	return New(s[:i], size)
}

// MissingSubject returns the PreconditionFailure subject REAPI clients expect for a missing
// blob: "blobs/<hash>/<size>".
func (d Digest) MissingSubject() string {
	return fmt.Sprintf("blobs/%s/%d", d.Hash, d.Size)
}
