package digest

import (
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Compressor names a ByteStream compression ("compressed-blobs/{compressor}/…").
type Compressor string

// The compressors buildfleet understands.
const (
	Identity Compressor = "identity"
	Zstd     Compressor = "zstd"
)

// ResourceName is a parsed ByteStream resource name:
// "{instance}/blobs/{hash}/{size}[/…]" for reads,
// "{instance}/uploads/{uuid}/blobs/{hash}/{size}[/…]" for writes, and the
// "compressed-blobs/{compressor}/{hash}/{size}" forms of both.
type ResourceName struct {
	Instance   string
	UploadID   string // Empty for reads.
	Compressor Compressor
	Digest     Digest
}

// ParseReadResourceName parses "{instance}/blobs/{hash}/{size}" or
// "{instance}/compressed-blobs/{compressor}/{hash}/{size}".
func ParseReadResourceName(name string) (ResourceName, error) {
	return parseResourceName(name, false)
}

// ParseWriteResourceName parses "{instance}/uploads/{uuid}/blobs/{hash}/{size}[/{anything}]" or
// its compressed-blobs form.
func ParseWriteResourceName(name string) (ResourceName, error) {
	return parseResourceName(name, true)
}

func parseResourceName(name string, write bool) (ResourceName, error) {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		var rn ResourceName
		rest := parts[i:]
		if write {
			if p != "uploads" || len(rest) < 2 {
				continue
			}
			rn.UploadID = rest[1]
			rest = rest[2:]
			if len(rest) == 0 {
				continue
			}
		}
		switch rest[0] {
		case "blobs":
			if len(rest) < 3 {
				continue
			}
			rn.Compressor = Identity
			rest = rest[1:]
		case "compressed-blobs":
			if len(rest) < 4 {
				continue
			}
			rn.Compressor = Compressor(rest[1])
			rest = rest[2:]
		default:
			continue
		}
		// For reads nothing may follow the size; writes may carry optional metadata.
		if !write && len(rest) != 2 {
			return ResourceName{}, status.Errorf(codes.InvalidArgument, "Invalid resource name %q: unexpected trailing components", name)
		}
		instance := strings.Join(parts[:i], "/")
		if err := checkInstance(instance); err != nil {
			return ResourceName{}, status.Errorf(codes.InvalidArgument, "Invalid resource name %q: %v", name, err)
		}
		d, err := Parse(rest[0] + "/" + rest[1])
		if err != nil {
			return ResourceName{}, status.Errorf(codes.InvalidArgument, "Invalid resource name %q: %s", name, status.Convert(err).Message())
		}
		if rn.Compressor != Identity && rn.Compressor != Zstd {
			return ResourceName{}, status.Errorf(codes.InvalidArgument, "Invalid resource name %q: unsupported compressor %q", name, rn.Compressor)
		}
		rn.Instance = instance
		rn.Digest = d
		return rn, nil
	}
	kind := "{instance}/blobs/{hash}/{size}"
	if write {
		kind = "{instance}/uploads/{uuid}/blobs/{hash}/{size}"
	}
	return ResourceName{}, status.Errorf(codes.InvalidArgument, "Invalid resource name %q: want %s", name, kind)
}

// checkInstance refuses instance names that contain the reserved path components.
func checkInstance(instance string) error {
	if instance == "" {
		return nil
	}
	for _, p := range strings.Split(instance, "/") {
		switch p {
		case "", ".", "..":
			return status.Error(codes.InvalidArgument, "instance name has an empty, '.' or '..' component")
		case "blobs", "uploads", "compressed-blobs", "actions", "actionResults", "operations", "capabilities":
			return status.Errorf(codes.InvalidArgument, "instance name may not contain the reserved word %q", p)
		}
	}
	return nil
}

// CheckInstanceName validates an instance name as given in a request, returning INVALID_ARGUMENT
// for one that could not round-trip through a resource name.
func CheckInstanceName(instance string) error {
	return checkInstance(instance)
}

// ReadResourceName formats the ByteStream read resource name of d in instance.
func ReadResourceName(instance string, d Digest, c Compressor) string {
	return join(instance, blobPart(d, c))
}

// WriteResourceName formats a fresh ByteStream upload resource name of d in instance.
func WriteResourceName(instance string, d Digest, c Compressor) string {
	return join(instance, "uploads/"+uuid.NewString()+"/"+blobPart(d, c))
}

func blobPart(d Digest, c Compressor) string {
	if c == "" || c == Identity {
		return "blobs/" + d.String()
	}
	return "compressed-blobs/" + string(c) + "/" + d.String()
}

func join(instance, rest string) string {
	if instance == "" {
		return rest
	}
	return instance + "/" + rest
}
