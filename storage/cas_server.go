package storage

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

const (
	// batchParallelism bounds the blobs of one batch written or read at once.
	batchParallelism = 8
	// maxTreePageSize bounds the directories of one GetTree page.
	maxTreePageSize = 10000
	// treePageTokenPrefix versions GetTree page tokens.
	treePageTokenPrefix = "v2:"
	// treePageTokenReserve is kept free in a GetTree page for its next_page_token.
	treePageTokenReserve = 128
	// maxPooledDigests bounds the digest slices FindMissingBlobs returns to its pool.
	maxPooledDigests = 1 << 17
)

// digestSlices holds the slices FindMissingBlobs validates a request's digests into, so that a
// call of tens of thousands of digests does not allocate (and zero) a new one every time.
var digestSlices = sync.Pool{New: func() any { return new([]digest.Digest) }}

// casServer implements the REAPI ContentAddressableStorage service over a BlobStore.
type casServer struct {
	repb.UnimplementedContentAddressableStorageServer
	cas     BlobStore
	opts    ServiceOptions
	decoder *zstd.Decoder // For zstd entries of BatchUpdateBlobs; DecodeAll is concurrency-safe.
}

func newCASServer(cas BlobStore, opts ServiceOptions) *casServer {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(uint64(opts.MaxBatchTotalSizeBytes)*4+1<<20))
	if err != nil {
		panic(err) // Only invalid options fail, and these are constant.
	}
	return &casServer{cas: cas, opts: opts, decoder: dec}
}

// checkRequest validates the instance name and digest function common to every request.
func checkRequest(instance string, f repb.DigestFunction_Value) error {
	if err := digest.CheckInstanceName(instance); err != nil {
		return err
	}
	return digest.CheckFunction(f)
}

// FindMissingBlobs implements repb.ContentAddressableStorageServer.
func (c *casServer) FindMissingBlobs(ctx context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	if err := checkRequest(req.GetInstanceName(), req.GetDigestFunction()); err != nil {
		return nil, err
	}
	pooled := digestSlices.Get().(*[]digest.Digest)
	ds := slices.Grow((*pooled)[:0], len(req.GetBlobDigests()))
	defer func() {
		if cap(ds) <= maxPooledDigests {
			clear(ds) // Keep no hash string of this request alive in the pool.
			*pooled = ds[:0]
			digestSlices.Put(pooled)
		}
	}()
	for _, p := range req.GetBlobDigests() {
		d, err := digest.FromProto(p)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	missing, err := c.cas.FindMissing(ctx, ds)
	if err != nil {
		err = rpcstatus.WrapCode(err, codes.Internal, "Failed to find missing blobs")
		logRPCError(c.opts.Logger, c.opts.warnings, err, "FindMissingBlobs failed")
		return nil, err
	}
	// The store answers in the order given: walk the request alongside and answer with its own
	// Digest messages rather than allocating new ones.
	resp := &repb.FindMissingBlobsResponse{MissingBlobDigests: make([]*repb.Digest, 0, len(missing))}
	j := 0
	for i, p := range req.GetBlobDigests() {
		if j < len(missing) && ds[i] == missing[j] {
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, p)
			j++
		}
	}
	for ; j < len(missing); j++ { // Only if a store broke the order: still answer in full.
		resp.MissingBlobDigests = append(resp.MissingBlobDigests, missing[j].Proto())
	}
	return resp, nil
}

// BatchUpdateBlobs implements repb.ContentAddressableStorageServer. Each blob is verified
// against its digest before it is stored; a mismatch fails only that blob's entry.
func (c *casServer) BatchUpdateBlobs(ctx context.Context, req *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	if err := checkRequest(req.GetInstanceName(), req.GetDigestFunction()); err != nil {
		return nil, err
	}
	var total int64
	for _, r := range req.GetRequests() {
		total += int64(len(r.GetData()))
	}
	if total > c.opts.MaxBatchTotalSizeBytes {
		return nil, status.Errorf(codes.InvalidArgument, "Batch of %d blobs holds %d bytes, more than max_batch_total_size_bytes %d: upload large blobs with ByteStream.Write", len(req.GetRequests()), total, c.opts.MaxBatchTotalSizeBytes)
	}
	resp := &repb.BatchUpdateBlobsResponse{Responses: make([]*repb.BatchUpdateBlobsResponse_Response, len(req.GetRequests()))}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(batchParallelism)
	for i, r := range req.GetRequests() {
		resp.Responses[i] = &repb.BatchUpdateBlobsResponse_Response{Digest: r.GetDigest()}
		g.Go(func() error {
			resp.Responses[i].Status = status.Convert(c.updateBlob(gctx, r)).Proto()
			return nil
		})
	}
	g.Wait()
	return resp, nil
}

func (c *casServer) updateBlob(ctx context.Context, r *repb.BatchUpdateBlobsRequest_Request) error {
	d, err := digest.FromProto(r.GetDigest())
	if err != nil {
		return err
	}
	if err := c.opts.checkBlobSize(d); err != nil {
		return err
	}
	data := r.GetData()
	switch r.GetCompressor() {
	case repb.Compressor_IDENTITY:
	case repb.Compressor_ZSTD:
		if d.Size > c.opts.MaxBatchTotalSizeBytes*4 {
			return status.Errorf(codes.InvalidArgument, "Failed to store blob %s: too large to decompress in a batch", d)
		}
		data, err = c.decoder.DecodeAll(data, make([]byte, 0, d.Size))
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "Failed to store blob %s: invalid zstd data: %v", d, err)
		}
	default:
		return status.Errorf(codes.InvalidArgument, "Failed to store blob %s: unsupported compressor %s", d, r.GetCompressor())
	}
	if actual := digest.FromBytes(data); actual != d {
		return status.Errorf(codes.InvalidArgument, "Failed to store blob %s: content has digest %s", d, actual)
	}
	if err := c.cas.Put(ctx, d, bytes.NewReader(data)); err != nil {
		return rpcstatus.WrapCode(err, codes.Internal, "Failed to store blob %s", d)
	}
	return nil
}

// BatchReadBlobs implements repb.ContentAddressableStorageServer. Data is always returned
// uncompressed, which every client accepts.
func (c *casServer) BatchReadBlobs(ctx context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	if err := checkRequest(req.GetInstanceName(), req.GetDigestFunction()); err != nil {
		return nil, err
	}
	ds := make([]digest.Digest, len(req.GetDigests()))
	var total int64
	for i, p := range req.GetDigests() {
		d, err := digest.FromProto(p)
		if err != nil {
			return nil, err
		}
		ds[i] = d
		total += d.Size
	}
	if total > c.opts.MaxBatchTotalSizeBytes {
		return nil, status.Errorf(codes.InvalidArgument, "Batch of %d blobs totals %d bytes, more than max_batch_total_size_bytes %d: read large blobs with ByteStream.Read", len(ds), total, c.opts.MaxBatchTotalSizeBytes)
	}
	if n := batchReadAnswerSize(ds); n > c.opts.maxAnswerBytes() {
		return nil, status.Errorf(codes.InvalidArgument, "Batch of %d blobs would be answered by a %d-byte message, more than %d bytes: ask for fewer blobs per batch", len(ds), n, c.opts.maxAnswerBytes())
	}
	resp := &repb.BatchReadBlobsResponse{Responses: make([]*repb.BatchReadBlobsResponse_Response, len(ds))}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(batchParallelism)
	for i, d := range ds {
		resp.Responses[i] = &repb.BatchReadBlobsResponse_Response{Digest: d.Proto()}
		g.Go(func() error {
			data, err := readBlob(gctx, c.cas, d)
			resp.Responses[i].Data = data
			resp.Responses[i].Status = status.Convert(err).Proto()
			return nil
		})
	}
	g.Wait()
	if proto.Size(resp) > c.opts.maxAnswerBytes() {
		// Only error messages can outgrow the prediction (a missing 1-byte blob's message is
		// longer than its data): keep their codes, drop their text.
		for _, r := range resp.Responses {
			if r.Status.GetCode() != int32(codes.OK) {
				r.Status.Message = ""
			}
		}
	}
	return resp, nil
}

// batchReadAnswerSize is the size of the BatchReadBlobsResponse holding every blob of ds.
func batchReadAnswerSize(ds []digest.Digest) int {
	n := 0
	for _, d := range ds {
		e := proto.Size(&repb.BatchReadBlobsResponse_Response{Digest: d.Proto(), Status: &spb.Status{}})
		if d.Size > 0 {
			e += 1 + protowire.SizeVarint(uint64(d.Size)) + int(d.Size)
		}
		n += 1 + protowire.SizeVarint(uint64(e)) + e
	}
	return n
}

// readBlob reads the whole of a small blob into memory.
func readBlob(ctx context.Context, cas BlobStore, d digest.Digest) ([]byte, error) {
	r, err := cas.Get(ctx, d, 0, 0)
	if err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to read blob %s", d)
	}
	defer r.Close()
	data := make([]byte, d.Size)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to read blob %s", d)
	}
	return data, nil
}

// GetTree implements repb.ContentAddressableStorageServer. It returns the Directory messages
// below the root in breadth-first order, each distinct directory once. Page tokens hold the
// number of directories already returned; directories missing from the CAS (other than the
// root) are skipped, as the specification allows.
func (c *casServer) GetTree(req *repb.GetTreeRequest, stream repb.ContentAddressableStorage_GetTreeServer) error {
	ctx := stream.Context()
	if err := checkRequest(req.GetInstanceName(), req.GetDigestFunction()); err != nil {
		return err
	}
	root, err := digest.FromProto(req.GetRootDigest())
	if err != nil {
		return err
	}
	if req.GetPageSize() < 0 {
		return status.Errorf(codes.InvalidArgument, "Invalid page size %d", req.GetPageSize())
	}
	pageSize := int(req.GetPageSize())
	if pageSize == 0 || pageSize > maxTreePageSize {
		pageSize = maxTreePageSize
	}
	skip := 0
	if tok := req.GetPageToken(); tok != "" {
		n, err := parseTreePageToken(tok, root)
		if err != nil {
			return err
		}
		skip = n
	}
	// Every page, framing and next_page_token included, fits in the answer size clients accept.
	maxBytes := c.opts.maxAnswerBytes() - treePageTokenReserve
	seen := map[digest.Digest]bool{root: true}
	queue := []digest.Digest{root}
	var page []*repb.Directory
	emitted, bytesInPage := 0, 0
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		dir, err := readDirectory(ctx, c.cas, d)
		if err != nil {
			if status.Code(err) == codes.NotFound && d != root {
				continue
			}
			return rpcstatus.WrapCode(err, codes.Internal, "Failed to get tree %s", root)
		}
		for _, child := range dir.GetDirectories() {
			cd, err := digest.FromProto(child.GetDigest())
			if err != nil {
				return rpcstatus.WrapCode(err, codes.InvalidArgument, "Failed to get tree %s: directory %s has an invalid child %q", root, d, child.GetName())
			}
			if !seen[cd] {
				seen[cd] = true
				queue = append(queue, cd)
			}
		}
		emitted++
		if emitted <= skip {
			continue
		}
		entry := 1 + protowire.SizeVarint(uint64(d.Size)) + int(d.Size)
		if len(page) > 0 && (len(page) >= pageSize || bytesInPage+entry > maxBytes) {
			return stream.Send(&repb.GetTreeResponse{Directories: page, NextPageToken: treePageToken(root, emitted-1)})
		}
		if entry > maxBytes {
			// Alone on its page it would still be an answer a client on gRPC's default receive
			// limit cannot take: say so instead of sending it.
			return status.Errorf(codes.FailedPrecondition, "Failed to get tree %s: directory %s is %d bytes, more than fits in one GetTree answer (%d bytes); read it with ByteStream", root, d, d.Size, maxBytes)
		}
		page = append(page, dir)
		bytesInPage += entry
	}
	if skip > 0 && emitted < skip {
		return status.Errorf(codes.InvalidArgument, "Invalid page token %q: the tree has only %d directories", req.GetPageToken(), emitted)
	}
	return stream.Send(&repb.GetTreeResponse{Directories: page})
}

// treePageToken returns the GetTree page token that resumes the tree of root after skip
// directories: "v2:" HASH-OF-ROOT "/" SKIP. Binding the root keeps a token from one tree from
// being used for another.
func treePageToken(root digest.Digest, skip int) string {
	return treePageTokenPrefix + root.Hash + "/" + strconv.Itoa(skip)
}

// parseTreePageToken returns the number of directories a page token of root's tree skips;
// INVALID_ARGUMENT for a malformed token or one of another tree.
func parseTreePageToken(tok string, root digest.Digest) (int, error) {
	rest, ok := strings.CutPrefix(tok, treePageTokenPrefix)
	hash, n, ok2 := strings.Cut(rest, "/")
	skip, err := strconv.Atoi(n)
	if !ok || !ok2 || err != nil || skip < 0 || strconv.Itoa(skip) != n {
		return 0, status.Errorf(codes.InvalidArgument, "Invalid page token %q", tok)
	}
	if hash != root.Hash {
		return 0, status.Errorf(codes.InvalidArgument, "Invalid page token %q: it belongs to another tree than %s", tok, root)
	}
	return skip, nil
}

// readDirectory reads and parses a Directory message from the CAS.
func readDirectory(ctx context.Context, cas BlobStore, d digest.Digest) (*repb.Directory, error) {
	if d.Size > maxTreeSize {
		return nil, status.Errorf(codes.InvalidArgument, "Directory %s is larger than %d bytes", d, maxTreeSize)
	}
	data, err := readBlob(ctx, cas, d)
	if err != nil {
		return nil, err
	}
	dir := &repb.Directory{}
	if err := proto.Unmarshal(data, dir); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Blob %s is not a valid Directory message: %v", d, err)
	}
	return dir, nil
}
