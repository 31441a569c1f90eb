package console

import (
	"net/http"
	"sort"

	"github.com/buildfleet/buildfleet/scheduler"
)

// buildRow is one build as the viewer may see it: counts of readable instance names only.
type buildRow struct {
	scheduler.BuildSummary
	Total     scheduler.BuildCounts
	Live      int
	Instances []string
}

// FailedOnWorkers is how many of the failed executions ran on a worker (the others failed
// before: no worker for their platform, missing inputs).
func (b buildRow) FailedOnWorkers() int { return b.Total.Remote - b.Total.Succeeded }

// visibleBuild returns the part of b the viewer may read, and false if that is nothing.
func visibleBuild(b scheduler.BuildSummary, v *viewer) (buildRow, bool) {
	row := buildRow{BuildSummary: b}
	seen := map[string]bool{}
	for inst, c := range b.Counts {
		if v.CanRead(inst) {
			addCounts(&row.Total, c)
			seen[inst] = true
		}
	}
	for inst, n := range b.Running {
		if v.CanRead(inst) {
			row.Live += n
			seen[inst] = true
		}
	}
	for inst := range seen {
		row.Instances = append(row.Instances, inst)
	}
	sort.Strings(row.Instances)
	return row, len(seen) > 0
}

// buildsData is the builds page.
type buildsData struct {
	Builds []buildRow
}

func (c *Console) builds(r *http.Request, v *viewer) view {
	var d buildsData
	for _, b := range c.opts.Scheduler.Builds() {
		if row, ok := visibleBuild(b, v); ok {
			d.Builds = append(d.Builds, row)
		}
	}
	return view{template: "builds", title: "Builds", nav: "builds", live: true, data: d}
}

// buildData is one build's page.
type buildData struct {
	buildRow
	Failures []scheduler.ActionSummary
	Actions  []scheduler.ActionSummary
	Slowest  []scheduler.ActionSummary
	// LiveActions are the build's queued and executing executions.
	LiveActions []scheduler.ExecutionRecord
}

func (c *Console) build(r *http.Request, v *viewer) view {
	id := r.PathValue("id")
	if id == "-" {
		id = ""
	}
	b, ok := c.opts.Scheduler.Build(id)
	row, visible := visibleBuild(b.BuildSummary, v)
	if !ok || !visible {
		return errorView(http.StatusNotFound, "Unknown build", "The scheduler remembers no build "+id+" you may read (it keeps the last builds only).")
	}
	d := buildData{buildRow: row}
	for _, a := range b.Actions {
		if !v.CanRead(a.Instance) {
			continue
		}
		if a.Outcome == scheduler.OutcomeFailed {
			d.Failures = append(d.Failures, a)
		} else {
			d.Actions = append(d.Actions, a)
		}
	}
	for _, a := range b.Slowest {
		if v.CanRead(a.Instance) {
			d.Slowest = append(d.Slowest, a)
		}
	}
	for _, e := range b.Live {
		if v.CanRead(e.Instance) {
			d.LiveActions = append(d.LiveActions, e)
		}
	}
	title := "Build " + id
	if id == "" {
		title = "Executions without a tool invocation id"
	}
	return view{template: "build", title: title, nav: "builds", live: true, data: d}
}
