package runner_test

import (
	"context"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// testCAS is an in-memory CAS, ByteStream and Capabilities server that verifies what it is
// sent, enforces its batch limit, and counts the blobs it serves.
type testCAS struct {
	repb.UnimplementedContentAddressableStorageServer
	repb.UnimplementedCapabilitiesServer
	bspb.UnimplementedByteStreamServer

	maxBatch int64
	// gate, when set, blocks every read of gated until it is closed; entered receives the
	// digest when such a read arrives.
	gated   digest.Digest
	gate    chan struct{}
	entered chan digest.Digest

	// unavailable is how many FindMissingBlobs calls (the start of every output upload) still
	// fail with UNAVAILABLE, as when every scheduler replica is down for a moment.
	unavailable atomic.Int32

	mu    sync.Mutex
	blobs map[digest.Digest][]byte
	reads map[digest.Digest]int // Blobs served, by BatchReadBlobs or ByteStream Read.
	calls map[string]int        // RPCs received, by method name.
	// called is closed and replaced whenever an RPC is counted (see waitCalls).
	called  chan struct{}
	uploads map[digest.Digest]int
}

// startCAS serves a fresh testCAS over bufconn and returns it with a client connection.
func startCAS(t testing.TB, maxBatch int64) (*testCAS, *grpc.ClientConn) {
	s := &testCAS{
		maxBatch: maxBatch,
		blobs:    make(map[digest.Digest][]byte),
		reads:    make(map[digest.Digest]int),
		calls:    make(map[string]int),
		uploads:  make(map[digest.Digest]int),
		called:   make(chan struct{}),
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(int(maxBatch) + (1 << 20)))
	repb.RegisterContentAddressableStorageServer(srv, s)
	repb.RegisterCapabilitiesServer(srv, s)
	bspb.RegisterByteStreamServer(srv, s)
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return s, conn
}

func (s *testCAS) count(method string) {
	s.mu.Lock()
	s.calls[method]++
	close(s.called)
	s.called = make(chan struct{})
	s.mu.Unlock()
}

// waitCalls waits until method has been called more than n times, failing the test if it
// has not after 15 s. It is woken by each call, not by polling.
func (s *testCAS) waitCalls(t testing.TB, method string, n int) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		s.mu.Lock()
		got, called := s.calls[method], s.called
		s.mu.Unlock()
		if got > n {
			return
		}
		select {
		case <-called:
		case <-timeout:
			t.Fatalf("%s called %d times, want more than %d", method, got, n)
		}
	}
}

// readCount returns how many blobs were served since the last reset.
func (s *testCAS) readCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.reads {
		n += c
	}
	return n
}

// readsOf returns how many times d was served.
func (s *testCAS) readsOf(d digest.Digest) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads[d]
}

// uploadsOf returns how many times d was uploaded.
func (s *testCAS) uploadsOf(d digest.Digest) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uploads[d]
}

// callCount returns how many times method was called.
func (s *testCAS) callCount(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

func (s *testCAS) resetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads = make(map[digest.Digest]int)
	s.calls = make(map[string]int)
	s.uploads = make(map[digest.Digest]int)
}

func (s *testCAS) put(data []byte) digest.Digest {
	d := digest.FromBytes(data)
	s.mu.Lock()
	s.blobs[d] = append([]byte(nil), data...)
	s.mu.Unlock()
	return d
}

func (s *testCAS) putMessage(t testing.TB, m proto.Message) digest.Digest {
	b, _, err := digest.FromMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	return s.put(b)
}

func (s *testCAS) get(t testing.TB, d *repb.Digest) []byte {
	t.Helper()
	dd, err := digest.FromProto(d)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[dd]
	if !ok && dd.Size > 0 {
		t.Fatalf("blob %s was not uploaded", dd)
	}
	return b
}

func (s *testCAS) getMessage(t testing.TB, d *repb.Digest, m proto.Message) {
	t.Helper()
	if err := proto.Unmarshal(s.get(t, d), m); err != nil {
		t.Fatal(err)
	}
}

func (s *testCAS) remove(d digest.Digest) {
	s.mu.Lock()
	delete(s.blobs, d)
	s.mu.Unlock()
}

func (s *testCAS) wait(p *repb.Digest) {
	if s.gate != nil && p.GetHash() == s.gated.Hash {
		s.entered <- s.gated
		<-s.gate
	}
}

func (s *testCAS) GetCapabilities(ctx context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	s.count("GetCapabilities")
	return &repb.ServerCapabilities{CacheCapabilities: &repb.CacheCapabilities{
		DigestFunctions:             []repb.DigestFunction_Value{repb.DigestFunction_SHA256},
		MaxBatchTotalSizeBytes:      s.maxBatch,
		SymlinkAbsolutePathStrategy: repb.SymlinkAbsolutePathStrategy_ALLOWED,
	}}, nil
}

func (s *testCAS) FindMissingBlobs(ctx context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	s.count("FindMissingBlobs")
	if s.unavailable.Add(-1) >= 0 {
		return nil, status.Error(codes.Unavailable, "connection refused")
	}
	s.unavailable.Store(0)
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &repb.FindMissingBlobsResponse{}
	for _, p := range req.GetBlobDigests() {
		d, err := digest.FromProto(p)
		if err != nil {
			return nil, err
		}
		if _, ok := s.blobs[d]; !ok {
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, p)
		}
	}
	return resp, nil
}

func (s *testCAS) BatchUpdateBlobs(ctx context.Context, req *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	s.count("BatchUpdateBlobs")
	if int64(proto.Size(req)) > s.maxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d bytes exceeds %d", proto.Size(req), s.maxBatch)
	}
	resp := &repb.BatchUpdateBlobsResponse{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range req.GetRequests() {
		d, err := digest.FromProto(r.GetDigest())
		if err != nil {
			return nil, err
		}
		st := status.New(codes.OK, "")
		if digest.FromBytes(r.GetData()) != d {
			st = status.Newf(codes.InvalidArgument, "digest mismatch for %s", d)
		} else {
			s.blobs[d] = append([]byte(nil), r.GetData()...)
			s.uploads[d]++
		}
		resp.Responses = append(resp.Responses, &repb.BatchUpdateBlobsResponse_Response{Digest: r.GetDigest(), Status: st.Proto()})
	}
	return resp, nil
}

func (s *testCAS) BatchReadBlobs(ctx context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	s.count("BatchReadBlobs")
	var total int64
	for _, p := range req.GetDigests() {
		total += p.GetSizeBytes()
	}
	if total > s.maxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d bytes exceeds %d", total, s.maxBatch)
	}
	for _, p := range req.GetDigests() {
		s.wait(p)
	}
	resp := &repb.BatchReadBlobsResponse{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range req.GetDigests() {
		d, err := digest.FromProto(p)
		if err != nil {
			return nil, err
		}
		b, ok := s.blobs[d]
		if !ok {
			resp.Responses = append(resp.Responses, &repb.BatchReadBlobsResponse_Response{Digest: p, Status: status.New(codes.NotFound, "not found").Proto()})
			continue
		}
		s.reads[d]++
		resp.Responses = append(resp.Responses, &repb.BatchReadBlobsResponse_Response{Digest: p, Data: b, Status: status.New(codes.OK, "").Proto()})
	}
	return resp, nil
}

func (s *testCAS) Read(req *bspb.ReadRequest, stream bspb.ByteStream_ReadServer) error {
	s.count("Read")
	rn, err := digest.ParseReadResourceName(req.GetResourceName())
	if err != nil {
		return err
	}
	s.wait(rn.Digest.Proto())
	s.mu.Lock()
	b, ok := s.blobs[rn.Digest]
	if ok {
		s.reads[rn.Digest]++
	}
	s.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "blob %s not found", rn.Digest)
	}
	for off := 0; off < len(b); off += 64 << 10 {
		if err := stream.Send(&bspb.ReadResponse{Data: b[off:min(off+64<<10, len(b))]}); err != nil {
			return err
		}
	}
	return nil
}

func (s *testCAS) Write(stream bspb.ByteStream_WriteServer) error {
	s.count("Write")
	var name string
	var data []byte
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return status.Error(codes.InvalidArgument, "write ended without finish_write")
		}
		if err != nil {
			return err
		}
		if name == "" {
			name = req.GetResourceName()
		}
		if req.GetWriteOffset() != int64(len(data)) {
			return status.Errorf(codes.InvalidArgument, "write offset %d, want %d", req.GetWriteOffset(), len(data))
		}
		data = append(data, req.GetData()...)
		if req.GetFinishWrite() {
			break
		}
	}
	rn, err := digest.ParseWriteResourceName(name)
	if err != nil {
		return err
	}
	if digest.FromBytes(data) != rn.Digest {
		return status.Errorf(codes.InvalidArgument, "uploaded data does not match %s", rn.Digest)
	}
	s.mu.Lock()
	s.blobs[rn.Digest] = data
	s.uploads[rn.Digest]++
	s.mu.Unlock()
	return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: int64(len(data))})
}

// entry describes one node of an input tree built with putTree.
type entry struct {
	content string
	exec    bool
	symlink string // A symlink with this target when set.
	dir     bool   // An empty directory.
}

// putTree uploads the Directory messages and file contents of an input root given as
// slash-separated paths, and returns the root digest.
func (s *testCAS) putTree(t testing.TB, entries map[string]entry) digest.Digest {
	type node struct {
		files map[string]entry
		dirs  map[string]*node
	}
	newNode := func() *node { return &node{files: map[string]entry{}, dirs: map[string]*node{}} }
	root := newNode()
	for p, e := range entries {
		parts := strings.Split(p, "/")
		n := root
		for _, c := range parts[:len(parts)-1] {
			if n.dirs[c] == nil {
				n.dirs[c] = newNode()
			}
			n = n.dirs[c]
		}
		last := parts[len(parts)-1]
		if e.dir {
			if n.dirs[last] == nil {
				n.dirs[last] = newNode()
			}
			continue
		}
		n.files[last] = e
	}
	var build func(n *node) digest.Digest
	build = func(n *node) digest.Digest {
		dir := &repb.Directory{}
		names := make([]string, 0, len(n.files))
		for name := range n.files {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			e := n.files[name]
			if e.symlink != "" {
				dir.Symlinks = append(dir.Symlinks, &repb.SymlinkNode{Name: name, Target: e.symlink})
				continue
			}
			d := s.put([]byte(e.content))
			dir.Files = append(dir.Files, &repb.FileNode{Name: name, Digest: d.Proto(), IsExecutable: e.exec})
		}
		names = names[:0]
		for name := range n.dirs {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			dir.Directories = append(dir.Directories, &repb.DirectoryNode{Name: name, Digest: build(n.dirs[name]).Proto()})
		}
		return s.putMessage(t, dir)
	}
	return build(root)
}

// putAction uploads cmd and returns the Action running it on root, and its digest.
func (s *testCAS) putAction(t testing.TB, cmd *repb.Command, root digest.Digest, timeout time.Duration) (digest.Digest, *repb.Action) {
	a := &repb.Action{CommandDigest: s.putMessage(t, cmd).Proto(), InputRootDigest: root.Proto()}
	if timeout > 0 {
		a.Timeout = durationpb.New(timeout)
	}
	return s.putMessage(t, a), a
}
