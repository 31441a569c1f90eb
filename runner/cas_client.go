package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sync/errgroup"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

const (
	// defaultMaxBatchSize is the batch size used when the server does not advertise one; it is
	// the limit Pants and most servers use.
	defaultMaxBatchSize = 4 << 20
	// batchEntryOverhead is a generous bound on the per-blob framing in a batch request or
	// response (digest, status, field tags).
	batchEntryOverhead = 256
	// batchOverhead is kept free in every batch for the message envelope.
	batchOverhead = 16 << 10
	// maxBatchCount bounds the number of blobs in one batch request.
	maxBatchCount = 1000
	// byteStreamChunk is the size of ByteStream Write chunks.
	byteStreamChunk = 1 << 20
	// findMissingChunk bounds the digests in one FindMissingBlobs request.
	findMissingChunk = 10000
)

// casClient is the runner's view of the remote CAS: batched and streamed reads and writes
// that keep gRPC codes, and report blobs absent from the CAS as a MISSING precondition failure.
type casClient struct {
	instance    string
	cas         repb.ContentAddressableStorageClient
	caps        repb.CapabilitiesClient
	bs          bspb.ByteStreamClient
	concurrency int

	batchOnce    sync.Once
	maxBatchSize int64
	configured   int64
}

func newCASClient(conn grpc.ClientConnInterface, instance string, maxBatchSize int64, concurrency int) *casClient {
	return &casClient{
		instance:    instance,
		cas:         repb.NewContentAddressableStorageClient(conn),
		caps:        repb.NewCapabilitiesClient(conn),
		bs:          bspb.NewByteStreamClient(conn),
		concurrency: concurrency,
		configured:  maxBatchSize,
	}
}

// batchLimit returns the maximum total size of a batch request: the configured value, lowered
// to what the server advertises in GetCapabilities when it says so.
func (c *casClient) batchLimit(ctx context.Context) int64 {
	c.batchOnce.Do(func() {
		c.maxBatchSize = c.configured
		if c.maxBatchSize <= 0 {
			c.maxBatchSize = defaultMaxBatchSize
		}
		// Detached from the caller: the answer serves every later action too.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		caps, err := c.caps.GetCapabilities(cctx, &repb.GetCapabilitiesRequest{InstanceName: c.instance})
		if err != nil {
			return
		}
		if s := caps.GetCacheCapabilities().GetMaxBatchTotalSizeBytes(); s > 0 && s < c.maxBatchSize {
			c.maxBatchSize = s
		}
	})
	return c.maxBatchSize
}

// fitsInBatch reports whether a blob of size n may travel in a batch request.
func (c *casClient) fitsInBatch(ctx context.Context, n int64) bool {
	return n+batchEntryOverhead <= c.batchLimit(ctx)-batchOverhead
}

// batches splits digests into groups whose total size fits a batch.
func (c *casClient) batches(ctx context.Context, ds []digest.Digest) [][]digest.Digest {
	limit := c.batchLimit(ctx) - batchOverhead
	var out [][]digest.Digest
	var cur []digest.Digest
	var size int64
	for _, d := range ds {
		n := d.Size + batchEntryOverhead
		if len(cur) > 0 && (size+n > limit || len(cur) >= maxBatchCount) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, d)
		size += n
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

func (c *casClient) recvLimit(ctx context.Context) grpc.CallOption {
	return grpc.MaxCallRecvMsgSize(int(c.batchLimit(ctx)) + (1 << 20))
}

// readBlobs reads blobs into memory: small ones with BatchReadBlobs, large ones with
// ByteStream. Blobs absent from the CAS yield a MISSING precondition failure naming them all.
func (c *casClient) readBlobs(ctx context.Context, ds []digest.Digest) (map[digest.Digest][]byte, error) {
	out := make(map[digest.Digest][]byte, len(ds))
	var mu sync.Mutex
	var missing []digest.Digest
	var small []digest.Digest
	seen := make(map[digest.Digest]bool, len(ds))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.concurrency)
	for _, d := range ds {
		if seen[d] {
			continue
		}
		seen[d] = true
		if d.Size == 0 {
			out[d] = nil
			continue
		}
		if c.fitsInBatch(ctx, d.Size) {
			small = append(small, d)
			continue
		}
		g.Go(func() error {
			var buf bytes.Buffer
			err := c.readStream(gctx, d, &buf)
			mu.Lock()
			defer mu.Unlock()
			if status.Code(err) == codes.NotFound {
				missing = append(missing, d)
				return nil
			}
			if err != nil {
				return err
			}
			out[d] = buf.Bytes()
			return nil
		})
	}
	for _, batch := range c.batches(ctx, small) {
		g.Go(func() error {
			return c.batchRead(gctx, batch, func(d digest.Digest, data []byte) error {
				mu.Lock()
				defer mu.Unlock()
				if data == nil {
					missing = append(missing, d)
				} else {
					out[d] = data
				}
				return nil
			})
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, rpcstatus.Missing(missingMessage(missing), missing)
	}
	return out, nil
}

// batchRead reads one batch and calls found for each blob, with nil data for a blob the CAS
// does not hold. Data is verified against its digest.
func (c *casClient) batchRead(ctx context.Context, ds []digest.Digest, found func(digest.Digest, []byte) error) error {
	req := &repb.BatchReadBlobsRequest{InstanceName: c.instance, DigestFunction: repb.DigestFunction_SHA256}
	for _, d := range ds {
		req.Digests = append(req.Digests, d.Proto())
	}
	resp, err := c.cas.BatchReadBlobs(ctx, req, c.recvLimit(ctx))
	if err != nil {
		return rpcstatus.Wrap(err, "Failed to read %d blobs from the CAS", len(ds))
	}
	want := make(map[digest.Digest]bool, len(ds))
	for _, d := range ds {
		want[d] = true
	}
	for _, r := range resp.GetResponses() {
		d, err := digest.FromProto(r.GetDigest())
		if err != nil || !want[d] {
			return status.Errorf(codes.Internal, "CAS answered BatchReadBlobs with an unrequested digest %v", r.GetDigest())
		}
		delete(want, d)
		switch codes.Code(r.GetStatus().GetCode()) {
		case codes.OK:
			if got := digest.FromBytes(r.GetData()); got != d {
				return status.Errorf(codes.Internal, "CAS returned blob %s with digest %s", d, got)
			}
			if err := found(d, r.GetData()); err != nil {
				return err
			}
		case codes.NotFound:
			if err := found(d, nil); err != nil {
				return err
			}
		default:
			return rpcstatus.Wrap(status.ErrorProto(r.GetStatus()), "Failed to read blob %s from the CAS", d)
		}
	}
	if len(want) > 0 {
		return status.Errorf(codes.Internal, "CAS answered BatchReadBlobs without %d of the requested digests", len(want))
	}
	return nil
}

// readStream copies blob d from ByteStream Read into w, verifying size and SHA-256 as the bytes
// arrive. A blob with the wrong content yields INTERNAL; w has then received bad bytes.
func (c *casClient) readStream(ctx context.Context, d digest.Digest, w io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.bs.Read(ctx, &bspb.ReadRequest{ResourceName: digest.ReadResourceName(c.instance, d, digest.Identity)})
	if err != nil {
		return rpcstatus.Wrap(err, "Failed to read blob %s from the CAS", d)
	}
	h := sha256.New()
	var n int64
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return rpcstatus.Wrap(err, "Failed to read blob %s from the CAS", d)
		}
		data := resp.GetData()
		n += int64(len(data))
		if n > d.Size {
			return status.Errorf(codes.Internal, "CAS returned more than %d bytes for blob %s", d.Size, d)
		}
		h.Write(data)
		if _, err := w.Write(data); err != nil {
			return status.Errorf(codes.Internal, "Failed to write blob %s: %v", d, err)
		}
	}
	if n != d.Size {
		return status.Errorf(codes.Internal, "CAS returned %d bytes for blob %s", n, d)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hash {
		return status.Errorf(codes.Internal, "CAS returned blob %s with hash %s", d, got)
	}
	return nil
}

// uploadSource is where the bytes of a blob to upload come from: memory, or a file opened on
// demand.
type uploadSource struct {
	data []byte
	open func() (*os.File, error)
}

func (s uploadSource) reader() (io.ReadCloser, error) {
	if s.open == nil {
		return io.NopCloser(bytes.NewReader(s.data)), nil
	}
	return s.open()
}

// upload stores the blobs the CAS does not already hold: FindMissingBlobs, then BatchUpdateBlobs
// for small ones and ByteStream Write for large ones.
func (c *casClient) upload(ctx context.Context, blobs map[digest.Digest]uploadSource) error {
	var all []digest.Digest
	for d := range blobs {
		if d.Size > 0 {
			all = append(all, d)
		}
	}
	var missing []digest.Digest
	for i := 0; i < len(all); i += findMissingChunk {
		chunk := all[i:min(i+findMissingChunk, len(all))]
		req := &repb.FindMissingBlobsRequest{InstanceName: c.instance, DigestFunction: repb.DigestFunction_SHA256}
		for _, d := range chunk {
			req.BlobDigests = append(req.BlobDigests, d.Proto())
		}
		resp, err := c.cas.FindMissingBlobs(ctx, req)
		if err != nil {
			return rpcstatus.Wrap(err, "Failed to find missing blobs in the CAS")
		}
		for _, p := range resp.GetMissingBlobDigests() {
			d, err := digest.FromProto(p)
			if err != nil {
				return status.Errorf(codes.Internal, "CAS answered FindMissingBlobs with an invalid digest: %v", err)
			}
			missing = append(missing, d)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.concurrency)
	var small []digest.Digest
	for _, d := range missing {
		if c.fitsInBatch(ctx, d.Size) {
			small = append(small, d)
			continue
		}
		g.Go(func() error { return c.writeStream(gctx, d, blobs[d]) })
	}
	for _, batch := range c.batches(ctx, small) {
		g.Go(func() error { return c.batchUpdate(gctx, batch, blobs) })
	}
	return g.Wait()
}

func (c *casClient) batchUpdate(ctx context.Context, ds []digest.Digest, blobs map[digest.Digest]uploadSource) error {
	req := &repb.BatchUpdateBlobsRequest{InstanceName: c.instance, DigestFunction: repb.DigestFunction_SHA256}
	for _, d := range ds {
		src := blobs[d]
		data := src.data
		if src.open != nil {
			r, err := src.reader()
			if err != nil {
				return status.Errorf(codes.Internal, "Failed to read output for blob %s: %v", d, err)
			}
			data, err = io.ReadAll(io.LimitReader(r, d.Size+1))
			r.Close()
			if err != nil {
				return status.Errorf(codes.Internal, "Failed to read output for blob %s: %v", d, err)
			}
		}
		if int64(len(data)) != d.Size {
			return status.Errorf(codes.Internal, "Output for blob %s changed size while uploading", d)
		}
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: d.Proto(), Data: data})
	}
	resp, err := c.cas.BatchUpdateBlobs(ctx, req)
	if err != nil {
		return rpcstatus.Wrap(err, "Failed to upload %d blobs to the CAS", len(ds))
	}
	for _, r := range resp.GetResponses() {
		if codes.Code(r.GetStatus().GetCode()) != codes.OK {
			return rpcstatus.Wrap(status.ErrorProto(r.GetStatus()), "Failed to upload blob %s/%d to the CAS", r.GetDigest().GetHash(), r.GetDigest().GetSizeBytes())
		}
	}
	return nil
}

func (c *casClient) writeStream(ctx context.Context, d digest.Digest, src uploadSource) error {
	r, err := src.reader()
	if err != nil {
		return status.Errorf(codes.Internal, "Failed to open output for blob %s: %v", d, err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.bs.Write(ctx)
	if err != nil {
		return rpcstatus.Wrap(err, "Failed to upload blob %s to the CAS", d)
	}
	name := digest.WriteResourceName(c.instance, d, digest.Identity)
	buf := make([]byte, byteStreamChunk)
	var off int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			return status.Errorf(codes.Internal, "Failed to read output for blob %s: %v", d, rerr)
		}
		last := off+int64(n) >= d.Size
		req := &bspb.WriteRequest{WriteOffset: off, Data: buf[:n], FinishWrite: last}
		if off == 0 {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			if err == io.EOF {
				// The server ended the stream early: the blob is already present, or it failed.
				break
			}
			return rpcstatus.Wrap(err, "Failed to upload blob %s to the CAS", d)
		}
		off += int64(n)
		if last {
			break
		}
		if n == 0 {
			return status.Errorf(codes.Internal, "Output for blob %s is shorter than %d bytes", d, d.Size)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return rpcstatus.Wrap(err, "Failed to upload blob %s to the CAS", d)
	}
	if resp.GetCommittedSize() != d.Size && resp.GetCommittedSize() != -1 {
		return status.Errorf(codes.Internal, "CAS committed %d bytes of blob %s", resp.GetCommittedSize(), d)
	}
	return nil
}

// missingMessage describes blobs absent from the CAS: the first of them, and how many.
func missingMessage(ds []digest.Digest) string {
	if len(ds) == 1 {
		return fmt.Sprintf("Blob %s is missing from the CAS", ds[0])
	}
	return fmt.Sprintf("%d blobs are missing from the CAS, including %s", len(ds), ds[0])
}
