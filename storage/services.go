package storage

import (
	"context"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
)

// DefaultMaxAnswerSizeBytes is gRPC's default receive limit (4 MiB), the largest message clients
// such as Pants' and Buck2's Rust clients accept unless told otherwise. Every answer to a client
// that keeps to the advertised max_batch_total_size_bytes fits in it (BatchReadBlobs, GetTree
// pages, FindMissingBlobs, GetActionResult with inlined outputs).
const DefaultMaxAnswerSizeBytes = 4 << 20

// BatchFramingReserveBytes is kept between the advertised max_batch_total_size_bytes and the
// largest answer for the protobuf framing of a batch (digests, statuses, field tags: about 81
// bytes a blob, so a batch of up to 3,000 blobs filling max_batch_total_size_bytes still fits).
const BatchFramingReserveBytes = 256 << 10

// DefaultMaxBatchTotalSizeBytes is the default bound on the data of one BatchUpdateBlobs or
// BatchReadBlobs call, advertised as max_batch_total_size_bytes (Pants and Bazel read it from
// the capabilities): 4 MiB less the framing reserve, so that a batch answer of that much data
// still fits in gRPC's default 4 MiB receive limit.
const DefaultMaxBatchTotalSizeBytes = DefaultMaxAnswerSizeBytes - BatchFramingReserveBytes

// RecommendedMaxMessageSizeBytes is the gRPC message size limit (grpc.MaxRecvMsgSize and
// grpc.MaxSendMsgSize) a server hosting these services should allow: a batch of
// max_batch_total_size_bytes of data plus the request's framing exceeds gRPC's 4 MiB default.
const RecommendedMaxMessageSizeBytes = 16 << 20

// receiveBuffers is the pool gRPC reads received messages into (ReceiveBufferOptions): gRPC's
// default tiers (256 B, 4 KiB, 16 KiB, 32 KiB, 1 MiB) plus one just above 64 KiB, the chunk size
// Bazel, Pants and most clients upload in. With the default tiers every 64 KiB WriteRequest
// lands in a 1 MiB buffer that is cleared on each use: a fifth of the CPU of an upload.
var receiveBuffers = mem.NewTieredBufferPool(256, 4<<10, 16<<10, 32<<10, 64<<10+4<<10, 1<<20)

// ReceiveBufferOptions returns the gRPC server option that makes a server hosting these services
// read received messages into buffers sized for ByteStream upload chunks (receiveBuffers).
func ReceiveBufferOptions() []grpc.ServerOption {
	return []grpc.ServerOption{experimental.BufferPool(receiveBuffers)}
}

// ServiceOptions configures the REAPI services registered by RegisterServices.
type ServiceOptions struct {
	// ExecutionEnabled is advertised as execution_capabilities.exec_enabled.
	ExecutionEnabled bool
	// MaxBatchTotalSizeBytes bounds the data of one batch call (DefaultMaxBatchTotalSizeBytes
	// when zero).
	MaxBatchTotalSizeBytes int64
	// ActionCacheWritable decides whether a client may call UpdateActionResult on an
	// instance; nil allows every client. A refusal is PERMISSION_DENIED.
	ActionCacheWritable func(ctx context.Context, instance string) bool
	// Logger receives the services' logs.
	Logger zerolog.Logger
	// Clock times out abandoned resumable uploads and spaces the warnings of calls failing with
	// UNAVAILABLE (clock.System when nil).
	Clock clock.Clock
	// UploadIdleTimeout is how long an interrupted ByteStream upload is kept for resumption
	// (10 minutes when zero).
	UploadIdleTimeout time.Duration
	// MaxParkedUploads bounds how many interrupted uploads are kept for resumption; the least
	// recently used are dropped beyond it (DefaultMaxParkedUploads when zero).
	MaxParkedUploads int
	// MaxParkedUploadBytes bounds the bytes on disk of interrupted uploads kept for
	// resumption (DefaultMaxParkedUploadBytes when zero).
	MaxParkedUploadBytes int64
	// UploadDir is the directory ByteStream uploads are spooled to until finish_write when they
	// cannot be written into the store directly (compressed uploads; stores other than a
	// DiskBlobStore, whose uncompressed uploads go to its own temporary files); its contents are
	// removed at start. Empty: the system's temporary directory (spool files only, each
	// removed when its upload ends; nothing is removed at start).
	UploadDir string
	// MaxBlobSizeBytes is the largest blob ByteStream.Write and BatchUpdateBlobs accept (no
	// limit when zero); larger uploads fail with INVALID_ARGUMENT before any data is stored.
	// It is advertised as cache_capabilities.max_cas_blob_size_bytes.
	MaxBlobSizeBytes int64

	// warnings limits the warnings of calls failing with UNAVAILABLE (set by RegisterServices).
	warnings *warnLimiter
}

// maxAnswerBytes is the largest message the services send in answer to a request that keeps
// to MaxBatchTotalSizeBytes: that bound plus the framing reserve (4 MiB by default).
func (o ServiceOptions) maxAnswerBytes() int {
	return int(o.MaxBatchTotalSizeBytes + BatchFramingReserveBytes)
}

// checkBlobSize refuses a blob larger than MaxBlobSizeBytes.
func (o ServiceOptions) checkBlobSize(d digest.Digest) error {
	if o.MaxBlobSizeBytes > 0 && d.Size > o.MaxBlobSizeBytes {
		return status.Errorf(codes.InvalidArgument, "Blob %s is %d bytes, more than the largest blob this server accepts (%d bytes, --max-blob-size)", d, d.Size, o.MaxBlobSizeBytes)
	}
	return nil
}

func (o ServiceOptions) withDefaults() ServiceOptions {
	if o.MaxBatchTotalSizeBytes <= 0 {
		o.MaxBatchTotalSizeBytes = DefaultMaxBatchTotalSizeBytes
	}
	if o.Clock == nil {
		o.Clock = clock.System
	}
	if o.UploadIdleTimeout <= 0 {
		o.UploadIdleTimeout = 10 * time.Minute
	}
	return o
}

// RegisterServices registers the Capabilities, ContentAddressableStorage, ByteStream and
// ActionCache services on s, backed by cas and ac. ac is served as given: the caller composes
// its decorators once (cmd/scheduler wraps it in NewCompletenessCheckingActionCache, so that
// results whose outputs were evicted are misses and results naming missing outputs cannot be
// stored).
func RegisterServices(s *grpc.Server, cas BlobStore, ac ActionCache, opts ServiceOptions) {
	opts = opts.withDefaults()
	opts.warnings = newWarnLimiter(opts.Clock, unavailableLogInterval)
	repb.RegisterCapabilitiesServer(s, &capabilitiesServer{opts: opts})
	repb.RegisterContentAddressableStorageServer(s, newCASServer(cas, opts))
	bspb.RegisterByteStreamServer(s, newByteStreamServer(cas, opts))
	repb.RegisterActionCacheServer(s, &actionCacheServer{cas: cas, ac: ac, opts: opts})
}
