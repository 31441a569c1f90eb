package console

import (
	"net/http"
	"sort"
	"time"

	"github.com/buildfleet/buildfleet/scheduler"
)

// workerRow is one worker of the fleet and worker pages.
type workerRow struct {
	scheduler.WorkerInfo
	// Leases are the leases the viewer may see; Hidden counts the others.
	Leases []scheduler.LeaseView
	Hidden int
}

// Busy is the number of leases the worker holds.
func (w workerRow) Busy() int { return w.LeasesHeld }

// fleetData is the fleet page.
type fleetData struct {
	Workers       []workerRow
	Serving       int
	Draining      int
	Gone          int
	SlotsBusy     int
	SlotsTotal    int
	Interruptions []scheduler.Interruption
	// NoticesByKind counts the interruptions by notice kind ("no notice" for unannounced ones).
	NoticesByKind []kindCount
	LostWork      time.Duration
}

// kindCount is one notice kind's count.
type kindCount struct {
	Kind  string
	Count int
}

// workerRows returns the workers with the leases the viewer may see.
func (c *Console) workerRows(v *viewer) []workerRow {
	infos := c.opts.Scheduler.Workers()
	leases := c.opts.Scheduler.Leases()
	rows := make([]workerRow, 0, len(infos))
	for _, wi := range infos {
		row := workerRow{WorkerInfo: wi}
		for _, l := range leases[wi.Session] {
			if v.CanRead(l.Instance) {
				row.Leases = append(row.Leases, l)
			} else {
				row.Hidden++
			}
		}
		rows = append(rows, row)
	}
	// Live workers first (serving, draining, unavailable), gone ones last, each by bot id.
	rank := map[string]int{scheduler.WorkerDraining: 0, scheduler.WorkerServing: 1, scheduler.WorkerUnavailable: 2, scheduler.WorkerGone: 3}
	sort.SliceStable(rows, func(i, j int) bool { return rank[rows[i].State] < rank[rows[j].State] })
	return rows
}

func (c *Console) fleet(r *http.Request, v *viewer) view {
	d := fleetData{Workers: c.workerRows(v), Interruptions: c.opts.Scheduler.Interruptions()}
	for _, w := range d.Workers {
		switch w.State {
		case scheduler.WorkerServing:
			d.Serving++
		case scheduler.WorkerDraining:
			d.Draining++
		case scheduler.WorkerGone:
			d.Gone++
		}
		if w.State != scheduler.WorkerGone {
			d.SlotsBusy += w.LeasesHeld
			d.SlotsTotal += w.Capacity
		}
	}
	kinds := map[string]int{}
	for _, in := range d.Interruptions {
		k := in.Kind
		if !in.Announced {
			k = "no notice"
		} else if k == "" {
			k = "unspecified"
		}
		kinds[k]++
		d.LostWork += in.LostWork
	}
	for k, n := range kinds {
		d.NoticesByKind = append(d.NoticesByKind, kindCount{k, n})
	}
	sort.Slice(d.NoticesByKind, func(i, j int) bool { return d.NoticesByKind[i].Kind < d.NoticesByKind[j].Kind })
	return view{template: "fleet", title: "Fleet", nav: "fleet", live: true, data: d}
}

// workerData is the worker page.
type workerData struct {
	Sessions []workerRow
	BotID    string
	Recent   []scheduler.ExecutionRecord
	// HiddenRecent counts recent executions of instances the viewer may not read.
	HiddenRecent int
	Interruption []scheduler.Interruption
}

func (c *Console) worker(r *http.Request, v *viewer) view {
	bot := r.PathValue("bot")
	d := workerData{BotID: bot}
	for _, row := range c.workerRows(v) {
		if row.BotID == bot {
			d.Sessions = append(d.Sessions, row)
		}
	}
	for _, e := range c.opts.Scheduler.WorkerExecutions(bot, 100) {
		if v.CanRead(e.Instance) {
			d.Recent = append(d.Recent, e)
		} else {
			d.HiddenRecent++
		}
	}
	for _, in := range c.opts.Scheduler.Interruptions() {
		if in.BotID == bot {
			d.Interruption = append(d.Interruption, in)
		}
	}
	if len(d.Sessions) == 0 && len(d.Recent) == 0 && len(d.Interruption) == 0 {
		return errorView(http.StatusNotFound, "Unknown worker", "The scheduler has no worker "+bot+" (a gone worker is forgotten 10 minutes after it went).")
	}
	return view{template: "worker", title: "Worker " + bot, nav: "fleet", live: true, data: d}
}
