package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
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
// baseline writes the same bytes in the same chunks to a temporary file in a directory of the
// same file system while computing their SHA-256, then fsyncs and renames the file: the disk
// and hashing floor of a verified, durable write, without gRPC or the store.
func BenchmarkByteStreamWrite(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			e := newTestEnv(b, 4<<30, storage.ServiceOptions{})
			data := make([]byte, sz.size)
			rand.Read(data)
			key := "write/" + sz.name
			b.Run("baseline", func(b *testing.B) {
				dir := filepath.Join(e.dir, "baseline")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					binary.LittleEndian.PutUint64(data, uint64(i)+1<<32) // Distinct from the store's blobs.
					d := digest.FromBytes(data)
					b.StartTimer()
					final, err := writeFileHashed(dir, data, 64<<10, d)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					os.Remove(final)
					b.StartTimer()
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
					binary.LittleEndian.PutUint64(data, uint64(i)) // A distinct blob each time.
					d := digest.FromBytes(data)
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

// writeFileHashed writes data to a new temporary file in dir in chunk-sized writes while
// hashing it, checks the hash against want, fsyncs, and renames the file to its hash.
func writeFileHashed(dir string, data []byte, chunk int, want digest.Digest) (string, error) {
	f, err := os.CreateTemp(dir, "blob-*")
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for rest := data; len(rest) > 0; {
		n := min(chunk, len(rest))
		h.Write(rest[:n])
		if _, err := f.Write(rest[:n]); err != nil {
			f.Close()
			return "", err
		}
		rest = rest[n:]
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hash {
		f.Close()
		return "", fmt.Errorf("hash %s, want %s", got, want.Hash)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	final := filepath.Join(dir, want.Hash)
	return final, os.Rename(f.Name(), final)
}

// BenchmarkByteStreamRead downloads a stored blob per iteration through ByteStream.Read. Its
// baseline opens the very file the store holds the blob in, reads it in 64 KiB chunks and
// hashes it: the page-cache and hashing floor, without gRPC or the store.
func BenchmarkByteStreamRead(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			e := newTestEnv(b, 4<<30, storage.ServiceOptions{})
			data := make([]byte, sz.size)
			rand.Read(data)
			d := mustPut(b, e.store, data)
			data = nil
			key := "read/" + sz.name
			b.Run("baseline", func(b *testing.B) {
				path, err := e.store.Path(d)
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, 64<<10)
				b.SetBytes(d.Size)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := readFileHashed(path, buf, d); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				baselines.Record(b, key, nsPerOp(b), "")
			})
			b.Run("buildfleet", func(b *testing.B) {
				ctx := context.Background()
				name := digest.ReadResourceName("", d, digest.Identity)
				b.SetBytes(d.Size)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					stream, err := e.bs.Read(ctx, &bspb.ReadRequest{ResourceName: name})
					if err != nil {
						b.Fatal(err)
					}
					var n int64
					for {
						resp, err := stream.Recv()
						if err != nil {
							break
						}
						n += int64(len(resp.GetData()))
					}
					if n != d.Size {
						b.Fatalf("read %d bytes, want %d", n, d.Size)
					}
				}
				b.StopTimer()
				baselines.Ratio(b, key, nsPerOp(b), "x-baseline")
			})
		})
	}
}

// readFileHashed reads the file at path through buf, hashing it, and checks it against want.
func readFileHashed(path string, buf []byte, want digest.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	var n int64
	for {
		m, err := f.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != want.Size || got != want.Hash {
		return fmt.Errorf("read %s/%d, want %s", got, n, want)
	}
	return nil
}

// BenchmarkFindMissingBlobs10k checks 10,000 digests per call, one in ten of them present. Its
// baseline is the work no implementation can skip, in process: marshal and unmarshal the
// request, parse each digest and look it up in a Go map of the present ones, then marshal and
// unmarshal the response listing the 9,000 missing.
func BenchmarkFindMissingBlobs10k(b *testing.B) {
	e := newTestEnv(b, 1<<30, storage.ServiceOptions{})
	ds := make([]*repb.Digest, 10000)
	present := make(map[digest.Digest]struct{}, 1000)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range ds {
		data := []byte(fmt.Sprintf("blob number %d", i))
		d := digest.FromBytes(data)
		ds[i] = d.Proto()
		if i%10 == 0 {
			present[d] = struct{}{}
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
	req := &repb.FindMissingBlobsRequest{BlobDigests: ds}
	b.Run("baseline", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			missing, err := mapFindMissing(req, present)
			if err != nil || missing != 9000 {
				b.Fatalf("map lookup: %d missing, %v", missing, err)
			}
		}
		b.StopTimer()
		baselines.Record(b, "findmissing", nsPerOp(b), "")
	})
	b.Run("buildfleet", func(b *testing.B) {
		ctx := context.Background()
		for i := 0; i < b.N; i++ {
			resp, err := e.cas.FindMissingBlobs(ctx, req)
			if err != nil || len(resp.GetMissingBlobDigests()) != 9000 {
				b.Fatalf("FindMissingBlobs: %d missing, %v", len(resp.GetMissingBlobDigests()), err)
			}
		}
		b.StopTimer()
		baselines.Ratio(b, "findmissing", nsPerOp(b), "x-baseline")
	})
}

// mapFindMissing answers req from the set present the way a server would without gRPC or a
// store, round-tripping request and response through the wire format, and returns how many
// digests the decoded response lists as missing.
func mapFindMissing(req *repb.FindMissingBlobsRequest, present map[digest.Digest]struct{}) (int, error) {
	wire, err := proto.Marshal(req)
	if err != nil {
		return 0, err
	}
	in := &repb.FindMissingBlobsRequest{}
	if err := proto.Unmarshal(wire, in); err != nil {
		return 0, err
	}
	resp := &repb.FindMissingBlobsResponse{}
	for _, pd := range in.GetBlobDigests() {
		d, err := digest.FromProto(pd)
		if err != nil {
			return 0, err
		}
		if _, ok := present[d]; !ok {
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
