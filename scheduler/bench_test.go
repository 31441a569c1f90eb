package scheduler_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// BenchmarkNoopActions measures scheduling throughput and overhead: clients Execute distinct
// no-op actions over gRPC (bufconn) while one bot with 1 or 8 slots long-polls, takes leases and
// completes them at once. Reports actions/s and the mean Execute-to-done latency.
func BenchmarkNoopActions(b *testing.B) {
	for _, slots := range []int{1, 8} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			e := newEnv(b, scheduler.Config{})
			ds := make([]digest.Digest, b.N)
			for i := range ds {
				ds[i] = e.putAction(fmt.Sprintf("noop %d", i))
			}
			bot, _ := e.newBot("bench", slots)
			b.ResetTimer()
			start := time.Now()

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

			var latency atomic.Int64
			sem := make(chan struct{}, 4*slots)
			var clients sync.WaitGroup
			for _, d := range ds {
				sem <- struct{}{}
				clients.Add(1)
				go func() {
					defer func() { <-sem; clients.Done() }()
					t0 := time.Now()
					s, err := e.exec.Execute(e.ctx, &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
					if err != nil {
						b.Error(err)
						return
					}
					for {
						op, err := s.Recv()
						if err != nil {
							b.Error(err)
							return
						}
						if op.Done {
							break
						}
					}
					latency.Add(int64(time.Since(t0)))
				}()
			}
			clients.Wait()
			wg.Wait()
			if botErr != nil {
				b.Fatal(botErr)
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "actions/s")
			b.ReportMetric(float64(latency.Load())/float64(b.N)/1e6, "ms/action-latency")
		})
	}
}
