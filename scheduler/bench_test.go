package scheduler_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// BenchmarkNoopActions measures scheduling throughput and overhead: clients Execute distinct
// no-op actions over gRPC (bufconn) while one bot with 1 or 8 slots long-polls, takes leases and
// completes them at once. Reports actions/s and the mean Execute-to-done latency. Its baseline
// is the floor of a protocol of two RPCs per action: as many clients, with the same
// concurrency, each making two empty unary calls in turn per action to a server doing nothing,
// over a bufconn connection set up like the scheduler's.
func BenchmarkNoopActions(b *testing.B) {
	for _, slots := range []int{1, 8} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			key := fmt.Sprintf("noop/%d", slots)
			b.Run("baseline", func(b *testing.B) {
				caps := benchNoopServer(b)
				ctx := context.Background()
				b.ResetTimer()
				elapsed, latency := benchConcurrently(b, b.N, 4*slots, func(int) error {
					for range 2 {
						if _, err := caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
							return err
						}
					}
					return nil
				})
				reportActions(b, elapsed, latency)
				baselines.Record(b, key, float64(elapsed)/float64(b.N), "")
				baselines.Record(b, key+"/latency", float64(latency), "")
			})
			b.Run("buildfleet", func(b *testing.B) {
				e := newEnv(b, scheduler.Config{})
				ds := make([]digest.Digest, b.N)
				for i := range ds {
					ds[i] = e.putAction(fmt.Sprintf("noop %d", i))
				}
				bot, _ := e.newBot("bench", slots)
				b.ResetTimer()

				var botErr error
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					done := 0
					var changes []*rwpb.Lease
					for done < b.N {
						if _, err := bot.report(30*time.Second, changes...); err != nil {
							botErr = err
							return
						}
						done += len(changes)
						changes = changes[:0]
						for _, id := range bot.order {
							changes = append(changes, completed(b, id, &repb.ActionResult{}, codes.OK))
						}
					}
				}()

				elapsed, latency := benchConcurrently(b, b.N, 4*slots, func(i int) error {
					s, err := e.exec.Execute(e.ctx, &repb.ExecuteRequest{ActionDigest: ds[i].Proto(), SkipCacheLookup: true})
					if err != nil {
						return err
					}
					for {
						op, err := s.Recv()
						if err != nil {
							return err
						}
						if op.Done {
							return nil
						}
					}
				})
				wg.Wait()
				if botErr != nil {
					b.Fatal(botErr)
				}
				reportActions(b, elapsed, latency)
				baselines.Ratio(b, key, float64(elapsed)/float64(b.N), "x-baseline")
				baselines.Ratio(b, key+"/latency", float64(latency), "latency-x-baseline")
			})
		})
	}
}

// reportActions reports the throughput of b.N actions done in elapsed and their mean latency.
func reportActions(b *testing.B, elapsed, latency time.Duration) {
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "actions/s")
	b.ReportMetric(float64(latency)/1e6, "ms/action-latency")
}

// benchConcurrently calls do(i) for i in [0, n) from at most concurrency goroutines at a time and
// returns the time they all took and the mean duration of a call. It stops the timer.
func benchConcurrently(b *testing.B, n, concurrency int, do func(i int) error) (elapsed, mean time.Duration) {
	var total atomic.Int64
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			if err := do(i); err != nil {
				b.Error(err)
				return
			}
			total.Add(int64(time.Since(t0)))
		}()
	}
	wg.Wait()
	elapsed = time.Since(start)
	b.StopTimer()
	return elapsed, time.Duration(total.Load() / int64(max(n, 1)))
}

// benchNoopCapabilities answers GetCapabilities with an empty message: a unary RPC doing nothing.
type benchNoopCapabilities struct {
	repb.UnimplementedCapabilitiesServer
}

func (benchNoopCapabilities) GetCapabilities(context.Context, *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	return &repb.ServerCapabilities{}, nil
}

// benchNoopServer serves benchNoopCapabilities over bufconn, set up as newEnv sets up the scheduler's
// server and connection, and returns a client for it.
func benchNoopServer(b *testing.B) repb.CapabilitiesClient {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	repb.RegisterCapabilitiesServer(srv, benchNoopCapabilities{})
	go srv.Serve(lis)
	b.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return repb.NewCapabilitiesClient(conn)
}
