package storage

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

// readChunkSize is the size of the data of each ByteStream ReadResponse: just under 1 MiB, so
// that the encoded message (the data, its 1-byte field tag and 3-byte length) fits the 1 MiB
// tier of gRPC's buffer pool exactly. gRPC serializes every message into a pooled buffer of the
// smallest tier that holds it (256 B, 4 KiB, 16 KiB, 32 KiB, 1 MiB) and clears it; a 64 KiB
// chunk lands in the 1 MiB tier too and pays for clearing 16 times its size, a chunk of exactly
// 1 MiB would outgrow the tier and be allocated afresh. Clients accept it: it is far below
// gRPC's 4 MiB default receive limit.
const readChunkSize = 1<<20 - 64

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readChunkSize); return &b }}

var zstdEncoders = sync.Pool{New: func() any {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // Only invalid options fail, and these are constant.
	}
	return enc
}}

// byteStreamServer implements the ByteStream service for CAS blobs: reads of
// "{instance}/blobs/{hash}/{size}" and writes of "{instance}/uploads/{uuid}/blobs/{hash}/{size}",
// and their "compressed-blobs/zstd" forms. Data streams between the client and the store's
// files through fixed-size buffers; nothing holds a whole blob in memory.
type byteStreamServer struct {
	bspb.UnimplementedByteStreamServer
	cas     BlobStore
	uploads *uploadRegistry
	logger  zerolog.Logger
	opts    ServiceOptions
}

func newByteStreamServer(cas BlobStore, opts ServiceOptions) *byteStreamServer {
	return &byteStreamServer{
		opts:    opts,
		cas:     cas,
		uploads: newUploadRegistry(cas, opts.Clock, UploadLimits{IdleTimeout: opts.UploadIdleTimeout, MaxParked: opts.MaxParkedUploads, MaxParkedBytes: opts.MaxParkedUploadBytes}, opts.UploadDir),
		logger:  opts.Logger.With().Str("component", "bytestream").Logger(),
	}
}

// Read implements bspb.ByteStreamServer.
func (b *byteStreamServer) Read(req *bspb.ReadRequest, stream bspb.ByteStream_ReadServer) error {
	rn, err := digest.ParseReadResourceName(req.GetResourceName())
	if err != nil {
		return err
	}
	d := rn.Digest
	if req.GetReadOffset() < 0 || req.GetReadOffset() > d.Size {
		return status.Errorf(codes.OutOfRange, "Failed to read blob %s: read offset %d is outside the blob", d, req.GetReadOffset())
	}
	if req.GetReadLimit() < 0 {
		return status.Errorf(codes.InvalidArgument, "Failed to read blob %s: negative read limit %d", d, req.GetReadLimit())
	}
	if rn.Compressor != digest.Identity && req.GetReadLimit() != 0 {
		return status.Errorf(codes.InvalidArgument, "Failed to read blob %s: read_limit must be zero for compressed reads", d)
	}
	r, err := b.cas.Get(stream.Context(), d, req.GetReadOffset(), req.GetReadLimit())
	if err != nil {
		err = rpcstatus.WrapCode(err, codes.Internal, "Failed to read blob %s", d)
		logRPCError(b.logger, b.opts.warnings, err, "ByteStream.Read failed")
		return err
	}
	defer r.Close()
	sender := &chunkSender{stream: stream}
	defer sender.release()
	if rn.Compressor == digest.Zstd {
		enc := zstdEncoders.Get().(*zstd.Encoder)
		enc.Reset(sender)
		_, err = io.Copy(enc, r)
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		enc.Reset(nil)
		zstdEncoders.Put(enc)
		if err == nil {
			err = sender.flush()
		}
	} else {
		err = sender.copyFrom(r)
	}
	if err != nil {
		return rpcstatus.WrapCode(err, codes.Internal, "Failed to read blob %s", d)
	}
	return nil
}

// chunkSender sends data to a Read stream in chunks of at most readChunkSize bytes. Its buffer
// comes from readBuffers; release returns it.
type chunkSender struct {
	stream bspb.ByteStream_ReadServer
	bufp   *[]byte
	buf    []byte
}

// release returns the chunk buffer to the pool. The sender must not be used afterwards.
func (c *chunkSender) release() {
	if c.bufp != nil {
		readBuffers.Put(c.bufp)
		c.bufp, c.buf = nil, nil
	}
}

// copyFrom sends everything r holds, reading it straight into the chunk buffer.
func (c *chunkSender) copyFrom(r io.Reader) error {
	bufp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bufp)
	buf := *bufp
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if serr := c.stream.Send(&bspb.ReadResponse{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// Write buffers p, sending each full chunk.
func (c *chunkSender) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		if c.bufp == nil {
			c.bufp = readBuffers.Get().(*[]byte)
			c.buf = (*c.bufp)[:0]
		}
		n := min(len(p), readChunkSize-len(c.buf))
		c.buf = append(c.buf, p[:n]...)
		p = p[n:]
		if len(c.buf) == readChunkSize {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return written, nil
}

// flush sends the buffered data.
func (c *chunkSender) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.stream.Send(&bspb.ReadResponse{Data: c.buf})
	c.buf = c.buf[:0]
	return err
}

// QueryWriteStatus implements bspb.ByteStreamServer. An upload in progress reports the bytes
// received so far; a blob already stored reports complete with its full size (-1 for a
// compressed resource name, whose compressed size is unknown); anything else reports nothing
// committed, so the client starts from zero.
func (b *byteStreamServer) QueryWriteStatus(ctx context.Context, req *bspb.QueryWriteStatusRequest) (*bspb.QueryWriteStatusResponse, error) {
	rn, err := digest.ParseWriteResourceName(req.GetResourceName())
	if err != nil {
		return nil, err
	}
	if n, ok := b.uploads.committed(req.GetResourceName()); ok {
		return &bspb.QueryWriteStatusResponse{CommittedSize: n}, nil
	}
	missing, err := b.cas.FindMissing(ctx, []digest.Digest{rn.Digest})
	if err != nil {
		return nil, rpcstatus.WrapCode(err, codes.Internal, "Failed to query write status of blob %s", rn.Digest)
	}
	if len(missing) == 0 {
		return &bspb.QueryWriteStatusResponse{CommittedSize: completeSize(rn), Complete: true}, nil
	}
	return &bspb.QueryWriteStatusResponse{}, nil
}

// completeSize is the committed_size reported for a blob that is already stored.
func completeSize(rn digest.ResourceName) int64 {
	if rn.Compressor != digest.Identity {
		return -1
	}
	return rn.Digest.Size
}

// Write implements bspb.ByteStreamServer.
func (b *byteStreamServer) Write(stream bspb.ByteStream_WriteServer) error {
	err := b.write(stream)
	logRPCError(b.logger, b.opts.warnings, err, "ByteStream.Write failed")
	return err
}

func (b *byteStreamServer) write(stream bspb.ByteStream_WriteServer) error {
	ctx := stream.Context()
	req, err := stream.Recv()
	if err != nil {
		if err == io.EOF {
			return status.Error(codes.InvalidArgument, "Write stream carried no request")
		}
		return err
	}
	name := req.GetResourceName()
	rn, err := digest.ParseWriteResourceName(name)
	if err != nil {
		return err
	}
	d := rn.Digest
	if err := b.opts.checkBlobSize(d); err != nil {
		return err
	}
	if present, err := presentForWrite(ctx, b.cas, d); err != nil {
		return rpcstatus.WrapCode(err, codes.Internal, "Failed to write blob %s", d)
	} else if present {
		// Already stored: no need for the rest of the data.
		if u, err := b.uploads.acquire(ctx, name); err == nil && u != nil {
			b.uploads.remove(u)
		}
		return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: completeSize(rn)})
	}
	u, err := b.uploads.acquire(ctx, name)
	if err != nil {
		return err
	}
	switch {
	case u != nil && req.GetWriteOffset() == u.committed.Load():
		// Resume where the interrupted stream stopped.
	case req.GetWriteOffset() == 0:
		if u != nil {
			b.uploads.remove(u)
		}
		if u, err = b.uploads.start(name, rn); err != nil {
			return err
		}
	default:
		var committed int64
		if u != nil {
			committed = u.committed.Load()
			b.uploads.park(u)
		}
		return status.Errorf(codes.InvalidArgument, "Failed to write blob %s: write_offset %d does not match the committed size %d", d, req.GetWriteOffset(), committed)
	}
	return b.feed(stream, u, req)
}

// feed writes the data of req and of the stream's following requests into u until
// finish_write, and answers the stream.
func (b *byteStreamServer) feed(stream bspb.ByteStream_WriteServer, u *upload, req *bspb.WriteRequest) error {
	d := u.resource.Digest
	identity := u.resource.Compressor == digest.Identity
	fail := func(err error) error {
		b.uploads.remove(u)
		return err
	}
	for {
		if req.GetResourceName() != "" && req.GetResourceName() != u.name {
			return fail(status.Errorf(codes.InvalidArgument, "Failed to write blob %s: resource name changed mid-stream to %q", d, req.GetResourceName()))
		}
		committed := u.committed.Load()
		if req.GetWriteOffset() != committed {
			return fail(status.Errorf(codes.InvalidArgument, "Failed to write blob %s: write_offset %d does not match the committed size %d", d, req.GetWriteOffset(), committed))
		}
		data := req.GetData()
		if identity && committed+int64(len(data)) > d.Size {
			return fail(status.Errorf(codes.InvalidArgument, "Failed to write blob %s: more data than the blob's %d bytes", d, d.Size))
		}
		if !identity && committed+int64(len(data)) > maxCompressedSize(d.Size) {
			return fail(status.Errorf(codes.InvalidArgument, "Failed to write blob %s: more compressed data than a %d-byte blob can take", d, d.Size))
		}
		if len(data) > 0 {
			if err := u.write(data); err != nil {
				return fail(err)
			}
			committed = u.committed.Add(int64(len(data)))
		}
		if req.GetFinishWrite() {
			if identity && committed != d.Size {
				return fail(status.Errorf(codes.InvalidArgument, "Failed to write blob %s: finish_write after %d bytes, want %d", d, committed, d.Size))
			}
			err := u.finish(stream.Context(), b.cas)
			b.uploads.remove(u)
			if err != nil {
				return rpcstatus.WrapCode(err, codes.Internal, "Failed to write blob %s", d)
			}
			return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: committed})
		}
		next, err := stream.Recv()
		if err != nil {
			b.uploads.park(u)
			if errors.Is(err, io.EOF) {
				// Half-closed without finish_write: ByteStream answers with what was committed;
				// the upload stays incomplete and resumable. Compressed uploads cannot resume
				// (park drops them), so nothing of theirs stays committed.
				if !identity {
					committed = 0
				}
				return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: committed})
			}
			return err
		}
		req = next
	}
}

// maxCompressedSize bounds the zstd data accepted for a blob of size bytes: incompressible
// data grows by a few bytes per block, far less than this.
func maxCompressedSize(size int64) int64 { return size + size/8 + 1<<16 }
