package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

var benchSizes = []struct {
	name string
	size int
}{{"1MiB", 1 << 20}, {"256MiB", 256 << 20}}

// BenchmarkByteStreamWrite uploads a new blob per iteration through ByteStream.Write in 64 KiB
// chunks, as Bazel and Pants do, over an in-process gRPC connection into the disk store.
func BenchmarkByteStreamWrite(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			e := newTestEnv(b, 4<<30, storage.ServiceOptions{})
			data := make([]byte, sz.size)
			rand.Read(data)
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
		})
	}
}

// BenchmarkByteStreamRead downloads a stored blob per iteration through ByteStream.Read.
func BenchmarkByteStreamRead(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			e := newTestEnv(b, 4<<30, storage.ServiceOptions{})
			data := make([]byte, sz.size)
			rand.Read(data)
			d := mustPut(b, e.store, data)
			ctx := context.Background()
			name := digest.ReadResourceName("", d, digest.Identity)
			b.SetBytes(int64(sz.size))
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
		})
	}
}

// BenchmarkFindMissingBlobs10k checks 10,000 digests per call, one in ten of them present.
func BenchmarkFindMissingBlobs10k(b *testing.B) {
	e := newTestEnv(b, 1<<30, storage.ServiceOptions{})
	ds := make([]*repb.Digest, 10000)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range ds {
		data := []byte(fmt.Sprintf("blob number %d", i))
		d := digest.FromBytes(data)
		ds[i] = d.Proto()
		if i%10 == 0 {
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
	ctx := context.Background()
	req := &repb.FindMissingBlobsRequest{BlobDigests: ds}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := e.cas.FindMissingBlobs(ctx, req)
		if err != nil || len(resp.GetMissingBlobDigests()) != 9000 {
			b.Fatalf("FindMissingBlobs: %d missing, %v", len(resp.GetMissingBlobDigests()), err)
		}
	}
}

// BenchmarkGetActionResult measures cache hits of a result with output files, stdout and an
// output directory, including the completeness check, and reports p50 and p99 latency.
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
	req := &repb.GetActionResultRequest{ActionDigest: action.Proto()}
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := e.acc.GetActionResult(ctx, req); err != nil {
			b.Fatal(err)
		}
		latencies = append(latencies, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
}
