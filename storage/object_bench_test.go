package storage_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// serviceClients are in-process gRPC clients of the storage services on some stores.
type serviceClients struct {
	cas repb.ContentAddressableStorageClient
	bs  bspb.ByteStreamClient
	acc repb.ActionCacheClient
}

// serveStorage registers the storage services on cas and ac on a bufconn server, as the
// scheduler does, and returns clients of it.
func serveStorage(t testing.TB, cas storage.BlobStore, ac storage.ActionCache) *serviceClients {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(append(storage.ReceiveBufferOptions(), grpc.MaxRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxSendMsgSize(storage.RecommendedMaxMessageSizeBytes))...)
	storage.RegisterServices(srv, cas, storage.NewCompletenessCheckingActionCache(ac, cas), storage.ServiceOptions{Logger: zeroLogger()})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxCallSendMsgSize(storage.RecommendedMaxMessageSizeBytes)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &serviceClients{cas: repb.NewContentAddressableStorageClient(conn), bs: bspb.NewByteStreamClient(conn), acc: repb.NewActionCacheClient(conn)}
}

// s3Services serves the storage services on an S3 bucket (versitygw) behind a local tier of
// maxLocal bytes, as a scheduler with --object-store does.
func s3Services(b *testing.B, be *backend, maxLocal int64, ttl time.Duration) (*serviceClients, *storage.TieredBlobStore) {
	tier, _ := be.tier(b, maxLocal, ttl, 0)
	return serveStorage(b, tier, storage.NewObjectActionCache(be.bucket, 0, be.clock, zeroLogger())), tier
}

// readWhole reads blob d through ByteStream.Read and checks its length.
func readWhole(b *testing.B, bs bspb.ByteStreamClient, d digest.Digest) {
	stream, err := bs.Read(context.Background(), &bspb.ReadRequest{ResourceName: digest.ReadResourceName("", d, digest.Identity)})
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
		b.Fatalf("read %d bytes of %s", n, d)
	}
}

// BenchmarkObjectStoreByteStream256MiB writes and reads a 256 MiB blob through ByteStream on a
// scheduler whose cache is in S3 (versitygw on loopback, behind a 1 GiB local tier), against
// the same calls on the embedded disk store measured in this run (x-disk: the S3 tier's time
// over the disk store's). Reads are cold (the local tier is new and empty: the blob comes from
// the bucket, verified into the tier) and warm (the local tier holds it).
func BenchmarkObjectStoreByteStream256MiB(b *testing.B) {
	be := newS3Backend(b, backendConfig{timeout: time.Minute})
	const size = 256 << 20
	data := make([]byte, size)
	rand.Read(data)
	disk := newTestEnv(b, 2<<30, storage.ServiceOptions{})
	s3c, _ := s3Services(b, be, 1<<30, time.Minute)
	seq := uint64(0)
	write := func(b *testing.B, bs bspb.ByteStreamClient) digest.Digest {
		b.StopTimer()
		seq++
		binary.LittleEndian.PutUint64(data, seq) // A new blob each time.
		d := digest.FromBytes(data)
		b.StartTimer()
		resp, err := writeChunks(context.Background(), bs, digest.WriteResourceName("", d, digest.Identity), data, 0, 64<<10, true)
		if err != nil || resp.GetCommittedSize() != d.Size {
			b.Fatalf("write: %v, %v", resp, err)
		}
		return d
	}
	b.Run("write/disk", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			write(b, disk.bs)
		}
		b.StopTimer()
		baselines.Record(b, "os-write", nsPerOp(b), "")
	})
	var stored digest.Digest
	b.Run("write/s3-tier", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			stored = write(b, s3c.bs)
		}
		b.StopTimer()
		baselines.Ratio(b, "os-write", nsPerOp(b), "x-disk")
	})
	b.Run("read/disk", func(b *testing.B) {
		d := mustPut(b, disk.store, data)
		b.SetBytes(size)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			readWhole(b, disk.bs, d)
		}
		b.StopTimer()
		baselines.Record(b, "os-read", nsPerOp(b), "")
	})
	b.Run("read/s3-tier-cold", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			cold, _ := s3Services(b, be, 1<<30, time.Minute) // A new scheduler: empty local tier.
			b.StartTimer()
			readWhole(b, cold.bs, stored)
		}
		b.StopTimer()
		baselines.Ratio(b, "os-read", nsPerOp(b), "x-disk")
	})
	b.Run("read/s3-tier-warm", func(b *testing.B) {
		readWhole(b, s3c.bs, stored) // The writer's local tier holds it already; make sure.
		b.SetBytes(size)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			readWhole(b, s3c.bs, stored)
		}
		b.StopTimer()
		baselines.Ratio(b, "os-read", nsPerOp(b), "x-disk")
	})
}

// BenchmarkObjectStoreFindMissingBlobs10k checks 10,000 digests per call, nine in ten of them
// present (an incremental build's inputs), on the embedded disk store (the baseline), on S3
// with no existence cache (every digest is a HEAD request, 64 at a time), and on S3 with the
// existence cache warm (only the missing are asked). Reported as x-disk.
func BenchmarkObjectStoreFindMissingBlobs10k(b *testing.B) {
	be := newS3Backend(b, backendConfig{timeout: time.Minute})
	disk := newTestEnv(b, 1<<30, storage.ServiceOptions{})
	writer := be.objectStore(b, 0, 0)
	ds := make([]*repb.Digest, 10000)
	sem := make(chan struct{}, 32)
	errs := make(chan error, len(ds))
	for i := range ds {
		blob := []byte(fmt.Sprintf("find-missing blob %d", i))
		d := digest.FromBytes(blob)
		ds[i] = d.Proto()
		if i%10 == 0 {
			continue
		}
		mustPut(b, disk.store, blob)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- writer.Put(context.Background(), d, bytesReader(blob))
		}()
	}
	for i := 0; i < cap(sem); i++ {
		sem <- struct{}{}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	req := &repb.FindMissingBlobsRequest{BlobDigests: ds}
	run := func(b *testing.B, cas repb.ContentAddressableStorageClient) {
		for i := 0; i < b.N; i++ {
			resp, err := cas.FindMissingBlobs(context.Background(), req)
			if err != nil || len(resp.GetMissingBlobDigests()) != 1000 {
				b.Fatalf("FindMissingBlobs: %d missing, %v", len(resp.GetMissingBlobDigests()), err)
			}
		}
		b.StopTimer()
	}
	b.Run("disk", func(b *testing.B) {
		run(b, disk.cas)
		baselines.Record(b, "os-findmissing", nsPerOp(b), "")
	})
	b.Run("s3-cold", func(b *testing.B) {
		c, _ := s3Services(b, be, 1<<30, 0)
		b.ResetTimer()
		run(b, c.cas)
		baselines.Ratio(b, "os-findmissing", nsPerOp(b), "x-disk")
	})
	b.Run("s3-existence-cache", func(b *testing.B) {
		c, _ := s3Services(b, be, 1<<30, time.Hour)
		if _, err := c.cas.FindMissingBlobs(context.Background(), req); err != nil { // Warm the cache.
			b.Fatal(err)
		}
		b.ResetTimer()
		run(b, c.cas)
		baselines.Ratio(b, "os-findmissing", nsPerOp(b), "x-disk")
	})
}

// BenchmarkObjectStoreGetActionResult measures cache hits of a result with ten output files,
// stdout and an output directory (completeness check included) on S3 with a warm existence
// cache, against the embedded disk in this run, and reports p50 and p99.
func BenchmarkObjectStoreGetActionResult(b *testing.B) {
	be := newS3Backend(b, backendConfig{timeout: time.Minute})
	disk := newTestEnv(b, 1<<30, storage.ServiceOptions{})
	s3c, tier := s3Services(b, be, 1<<30, time.Hour)
	action := digest.FromBytes([]byte("action"))
	for _, env := range []struct {
		cas storage.BlobStore
		acc repb.ActionCacheClient
	}{{disk.store, disk.acc}, {tier, s3c.acc}} {
		result, _, _, _ := outputs(b, env.cas)
		for i := 0; i < 8; i++ {
			d := mustPut(b, env.cas, []byte(fmt.Sprintf("more output %d", i)))
			result.OutputFiles = append(result.OutputFiles, &repb.OutputFile{Path: fmt.Sprintf("out/%d", i), Digest: d.Proto()})
		}
		if _, err := env.acc.UpdateActionResult(context.Background(), &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: result}); err != nil {
			b.Fatal(err)
		}
	}
	req := &repb.GetActionResultRequest{ActionDigest: action.Proto()}
	b.Run("disk", func(b *testing.B) {
		p50, p99 := benchLatencies(b, func() error {
			_, err := disk.acc.GetActionResult(context.Background(), req)
			return err
		})
		baselines.Record(b, "os-gar-p50", p50, "p50-µs")
		baselines.Record(b, "os-gar-p99", p99, "p99-µs")
	})
	b.Run("s3", func(b *testing.B) {
		p50, p99 := benchLatencies(b, func() error {
			_, err := s3c.acc.GetActionResult(context.Background(), req)
			return err
		})
		b.ReportMetric(p50, "p50-µs")
		b.ReportMetric(p99, "p99-µs")
		baselines.Ratio(b, "os-gar-p50", p50, "p50-x-disk")
		baselines.Ratio(b, "os-gar-p99", p99, "p99-x-disk")
	})
}
