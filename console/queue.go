package console

import (
	"net/http"
	"time"

	"github.com/buildfleet/buildfleet/scheduler"
)

// queueData is the queue and throughput page.
type queueData struct {
	Groups []scheduler.QueueGroup
	Total  int
	// Bars are the throughput buckets, oldest first, scaled to Max.
	Bars []bar
	Max  int
	// Window sums are over the last minute and the whole 15 minutes.
	LastMinute, Window scheduler.BuildCounts
	// PerSecondMinute and PerSecondWindow are finished actions per second.
	PerSecondMinute, PerSecondWindow float64
	// HitRatioMinute and HitRatioWindow are cached over all finished, in percent (-1: none).
	HitRatioMinute, HitRatioWindow int
	Width                          time.Duration
}

// bar is one throughput bucket as drawn.
type bar struct {
	Start time.Time
	scheduler.BuildCounts
	Total int
}

// hitRatio is the cached share of c's finished executions in percent, -1 when none finished.
func hitRatio(c scheduler.BuildCounts) int {
	n := c.Finished()
	if n == 0 {
		return -1
	}
	return c.Cached * 100 / n
}

func (c *Console) queue(r *http.Request, v *viewer) view {
	d := queueData{Width: scheduler.ThroughputBucketWidth}
	for _, g := range c.opts.Scheduler.Queue() {
		if v.CanRead(g.Instance) {
			d.Groups = append(d.Groups, g)
			d.Total += g.Depth
		}
	}
	buckets := c.opts.Scheduler.Throughput()
	perMinute := int(time.Minute / scheduler.ThroughputBucketWidth)
	for i, b := range buckets {
		var sum scheduler.BuildCounts
		for inst, cnt := range b.Counts {
			if inst == scheduler.OtherInstances && !v.open || inst != scheduler.OtherInstances && !v.CanRead(inst) {
				continue
			}
			addCounts(&sum, cnt)
		}
		br := bar{Start: b.Start, BuildCounts: sum, Total: sum.Finished()}
		d.Bars = append(d.Bars, br)
		d.Max = max(d.Max, br.Total)
		addCounts(&d.Window, sum)
		// The last minute: the current partial bucket and the full ones before it.
		if i >= len(buckets)-perMinute-1 {
			addCounts(&d.LastMinute, sum)
		}
	}
	d.PerSecondMinute = float64(d.LastMinute.Finished()) / time.Minute.Seconds()
	d.PerSecondWindow = float64(d.Window.Finished()) / (time.Duration(len(buckets)) * scheduler.ThroughputBucketWidth).Seconds()
	d.HitRatioMinute, d.HitRatioWindow = hitRatio(d.LastMinute), hitRatio(d.Window)
	return view{template: "queue", title: "Queue and throughput", nav: "queue", live: true, data: d}
}

// addCounts adds b to a.
func addCounts(a *scheduler.BuildCounts, b scheduler.BuildCounts) {
	a.Remote += b.Remote
	a.Succeeded += b.Succeeded
	a.Cached += b.Cached
	a.Failed += b.Failed
	a.Cancelled += b.Cancelled
}
