package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

var benchSizes = []struct {
	name string
	size int
}{{"1MiB", 1 << 20}, {"256MiB", 256 << 20}}

// BenchmarkByteStreamWrite uploads a new blob per iteration through ByteStream.Write in 64 KiB
// chunks, as Bazel and Pants do, over an in-process gRPC connection into the disk store. Its
// baseline streams the same chunks over the same kind of connection to a bare gRPC server
// (bareByteStream, none of buildfleet's code) that writes them to a new file in a directory of
// the same file system while computing their SHA-256, checks it and renames the file: the floor
// of a verified write behind gRPC.
func BenchmarkByteStreamWrite(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			e := newTestEnv(b, 4<<30, storage.ServiceOptions{})
			data := make([]byte, sz.size)
			rand.Read(data)
			key := "write/" + sz.name
			// Every upload, across the rounds the framework runs, is of a new blob: a blob
			// already stored is answered before its data is read.
			var seq uint64
			b.Run("baseline", func(b *testing.B) {
				dir := filepath.Join(e.dir, "baseline")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					b.Fatal(err)
				}
				bare := serveBare(b, &bareByteStream{writeDir: dir})
				ctx := context.Background()
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					seq++
					binary.LittleEndian.PutUint64(data, seq)
					d := digest.FromBytes(data)
					syncFS(b, e.dir)
					b.StartTimer()
					resp, err := writeChunks(ctx, bare, digest.WriteResourceName("", d, digest.Identity), data, 0, 64<<10, true)
					if err != nil || resp.GetCommittedSize() != d.Size {
						b.Fatalf("write: %v, %v", resp, err)
					}
					// The file stays, as the store's blobs do: removing it would cancel the
					// write-back of its dirty pages, which the store's files must go through.
				}
				b.StopTimer()
				baselines.Record(b, key, nsPerOp(b), "")
			})
			b.Run("buildfleet", func(b *testing.B) {
				ctx := context.Background()
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					seq++
					binary.LittleEndian.PutUint64(data, seq)
					d := digest.FromBytes(data)
					syncFS(b, e.dir)
					b.StartTimer()
					resp, err := writeChunks(ctx, e.bs, digest.WriteResourceName("", d, digest.Identity), data, 0, 64<<10, true)
					if err != nil || resp.GetCommittedSize() != d.Size {
						b.Fatalf("write: %v, %v", resp, err)
					}
				}
				b.StopTimer()
				baselines.Ratio(b, key, nsPerOp(b), "x-baseline")
			})
		})
	}
}

// syncFS writes back the dirty pages of the file system holding dir (syncfs), so that every
// timed upload starts from the same state instead of competing with the write-back of the
// uploads before it.
func syncFS(b *testing.B, dir string) {
	f, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkByteStreamRead downloads a stored blob per iteration through ByteStream.Read. Its
// baseline is a bare gRPC server (bareByteStream, none of buildfleet's code) on the same kind of
// connection sending the very file the store holds the blob in, in 64 KiB messages; the client
// side is the same for both.
func BenchmarkByteStreamRead(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			e := newTestEnv(b, 4<<30, storage.ServiceOptions{})
			data := make([]byte, sz.size)
			rand.Read(data)
			d := mustPut(b, e.store, data)
			data = nil
			key := "read/" + sz.name
			name := digest.ReadResourceName("", d, digest.Identity)
			b.Run("baseline", func(b *testing.B) {
				path, err := e.store.Path(d)
				if err != nil {
					b.Fatal(err)
				}
				bare := serveBare(b, &bareByteStream{readPath: path})
				b.SetBytes(d.Size)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					readCounting(b, bare, name, d.Size)
				}
				b.StopTimer()
				baselines.Record(b, key, nsPerOp(b), "")
			})
			b.Run("buildfleet", func(b *testing.B) {
				b.SetBytes(d.Size)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					readCounting(b, e.bs, name, d.Size)
				}
				b.StopTimer()
				baselines.Ratio(b, key, nsPerOp(b), "x-baseline")
			})
		})
	}
}

// readCounting reads the resource name through bs, counting the bytes, and fails unless there
// are size of them.
func readCounting(b *testing.B, bs bspb.ByteStreamClient, name string, size int64) {
	stream, err := bs.Read(context.Background(), &bspb.ReadRequest{ResourceName: name})
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		} else if err != nil {
			b.Fatal(err)
		}
		n += int64(len(resp.GetData()))
	}
	if n != size {
		b.Fatalf("read %d bytes, want %d", n, size)
	}
}

// BenchmarkFindMissingBlobs10k checks 10,000 digests per call, one in ten of them present.
func BenchmarkFindMissingBlobs10k(b *testing.B) { benchFindMissing(b, 10000) }

// BenchmarkFindMissingBlobs50k checks 50,000 digests per call, one in ten of them present: the
// cost per digest must not grow with the size of the request.
func BenchmarkFindMissingBlobs50k(b *testing.B) { benchFindMissing(b, 50000) }

// benchFindMissing checks n digests per FindMissingBlobs call over an in-process gRPC
// connection to the disk store, one in ten of them present. Its baseline is the work no
// implementation can skip, in process, with none of buildfleet's code: marshal and unmarshal
// the request, look each digest up by a key parsed before the timer started ([32]byte, so no
// hex is decoded or validated) in a Go map of the present ones, then marshal and unmarshal the
// response listing the missing. Both report ns per digest too.
func benchFindMissing(b *testing.B, n int) {
	e := newTestEnv(b, 1<<30, storage.ServiceOptions{})
	ds := make([]*repb.Digest, n)
	keys := make([][sha256.Size]byte, n)
	present := make(map[[sha256.Size]byte]int64, n/10)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range ds {
		data := []byte(fmt.Sprintf("blob number %d", i))
		d := digest.FromBytes(data)
		ds[i] = d.Proto()
		keys[i] = sha256.Sum256(data)
		if i%10 == 0 {
			present[keys[i]] = d.Size
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := e.store.Put(context.Background(), d, bytes.NewReader(data)); err != nil {
					b.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	want := n - n/10
	key := fmt.Sprintf("findmissing/%d", n)
	req := &repb.FindMissingBlobsRequest{BlobDigests: ds}
	b.Run("baseline", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			missing, err := mapFindMissing(req, keys, present)
			if err != nil || missing != want {
				b.Fatalf("map lookup: %d missing, %v", missing, err)
			}
		}
		b.StopTimer()
		b.ReportMetric(nsPerOp(b)/float64(n), "ns/digest")
		baselines.Record(b, key, nsPerOp(b), "")
	})
	// For reference, not the goal: the baseline's lookups behind a bare gRPC server on the same
	// kind of connection (no validation, no store), to show what the transport alone adds.
	b.Run("bare-grpc", func(b *testing.B) {
		bare := &bareCAS{present: make(map[string]int64, len(present))}
		for i, pd := range ds {
			if _, ok := present[keys[i]]; ok {
				bare.present[pd.GetHash()] = pd.GetSizeBytes()
			}
		}
		cas := serveBareCAS(b, bare)
		ctx := context.Background()
		for i := 0; i < b.N; i++ {
			resp, err := cas.FindMissingBlobs(ctx, req)
			if err != nil || len(resp.GetMissingBlobDigests()) != want {
				b.Fatalf("bare FindMissingBlobs: %d missing, %v", len(resp.GetMissingBlobDigests()), err)
			}
		}
		b.StopTimer()
		b.ReportMetric(nsPerOp(b)/float64(n), "ns/digest")
		baselines.Ratio(b, key, nsPerOp(b), "x-baseline")
	})
	b.Run("buildfleet", func(b *testing.B) {
		ctx := context.Background()
		for i := 0; i < b.N; i++ {
			resp, err := e.cas.FindMissingBlobs(ctx, req)
			if err != nil || len(resp.GetMissingBlobDigests()) != want {
				b.Fatalf("FindMissingBlobs: %d missing, %v", len(resp.GetMissingBlobDigests()), err)
			}
		}
		b.StopTimer()
		b.ReportMetric(nsPerOp(b)/float64(n), "ns/digest")
		baselines.Ratio(b, key, nsPerOp(b), "x-baseline")
	})
}

// mapFindMissing answers req from the set present the way a server would without gRPC, a store
// or digest validation, round-tripping request and response through the wire format: keys[i]
// is the pre-parsed hash of the request's i-th digest. It returns how many digests the decoded
// response lists as missing.
func mapFindMissing(req *repb.FindMissingBlobsRequest, keys [][sha256.Size]byte, present map[[sha256.Size]byte]int64) (int, error) {
	wire, err := proto.Marshal(req)
	if err != nil {
		return 0, err
	}
	in := &repb.FindMissingBlobsRequest{}
	if err := proto.Unmarshal(wire, in); err != nil {
		return 0, err
	}
	resp := &repb.FindMissingBlobsResponse{}
	for i, pd := range in.GetBlobDigests() {
		if size, ok := present[keys[i]]; !ok || size != pd.GetSizeBytes() {
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, pd)
		}
	}
	if wire, err = proto.Marshal(resp); err != nil {
		return 0, err
	}
	out := &repb.FindMissingBlobsResponse{}
	if err := proto.Unmarshal(wire, out); err != nil {
		return 0, err
	}
	return len(out.GetMissingBlobDigests()), nil
}

// BenchmarkGetActionResult measures cache hits of a result with output files, stdout and an
// output directory, including the completeness check, and reports p50 and p99 latency. Its
// baseline is an empty unary call, Capabilities.GetCapabilities, on the same bufconn
// connection: the transport floor of any unary RPC.
func BenchmarkGetActionResult(b *testing.B) {
	e := newTestEnv(b, 1<<30, storage.ServiceOptions{})
	ctx := context.Background()
	result, _, _, _ := outputs(b, e.store)
	for i := 0; i < 8; i++ {
		d := mustPut(b, e.store, []byte(fmt.Sprintf("more output %d", i)))
		result.OutputFiles = append(result.OutputFiles, &repb.OutputFile{Path: fmt.Sprintf("out/%d", i), Digest: d.Proto()})
	}
	action := digest.FromBytes([]byte("action"))
	if _, err := e.acc.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: result}); err != nil {
		b.Fatal(err)
	}
	b.Run("baseline", func(b *testing.B) {
		req := &repb.GetCapabilitiesRequest{}
		p50, p99 := benchLatencies(b, func() error {
			_, err := e.caps.GetCapabilities(ctx, req)
			return err
		})
		baselines.Record(b, "getactionresult", nsPerOp(b), "")
		baselines.Record(b, "getactionresult-p50", p50, "p50-µs")
		baselines.Record(b, "getactionresult-p99", p99, "p99-µs")
	})
	b.Run("buildfleet", func(b *testing.B) {
		req := &repb.GetActionResultRequest{ActionDigest: action.Proto()}
		p50, p99 := benchLatencies(b, func() error {
			_, err := e.acc.GetActionResult(ctx, req)
			return err
		})
		b.ReportMetric(p50, "p50-µs")
		b.ReportMetric(p99, "p99-µs")
		baselines.Ratio(b, "getactionresult", nsPerOp(b), "x-baseline")
		baselines.Ratio(b, "getactionresult-p50", p50, "p50-x-baseline")
		baselines.Ratio(b, "getactionresult-p99", p99, "p99-x-baseline")
	})
}

// benchLatencies calls call b.N times, timing each, and returns the p50 and p99 in microseconds.
// The timer is stopped when it returns.
func benchLatencies(b *testing.B, call func() error) (p50, p99 float64) {
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := call(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	return us(lat[len(lat)/2]), us(lat[len(lat)*99/100])
}
