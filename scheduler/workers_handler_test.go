package scheduler_test

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// The /workers page shows each worker's state, and a draining one's deadline and reason.
func TestWorkersHandlerShowsDrainingWorkers(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	e.run("", e.putAction("busy"))
	spot, reply := e.newBot("spot", 2)
	spot.update(active(reply.Leases[0].Id))
	e.newBot("steady", 1)
	deadline := e.clk.Now().Add(2 * time.Minute).UTC()
	spot.status = rwpb.BotStatus_BOT_TERMINATING
	spot.drainConfigs(deadline, "spot-interruption", "terminate")
	spot.update(active(reply.Leases[0].Id))

	rec := httptest.NewRecorder()
	e.sched.WorkersHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/workers", nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var page struct {
		Workers []struct {
			BotID         string     `json:"bot_id"`
			State         string     `json:"state"`
			Capacity      int        `json:"capacity"`
			LeasesHeld    int        `json:"leases_held"`
			DrainDeadline *time.Time `json:"drain_deadline"`
			DrainKind     string     `json:"drain_kind"`
		} `json:"workers"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
		t.Fatalf("%v in %s", err, rec.Body)
	}
	got := map[string]int{}
	for i, w := range page.Workers {
		got[w.BotID] = i
	}
	s, ok1 := got["spot"]
	st, ok2 := got["steady"]
	if !ok1 || !ok2 || len(page.Workers) != 2 {
		t.Fatalf("workers %s", rec.Body)
	}
	sp, stw := page.Workers[s], page.Workers[st]
	if sp.State != scheduler.WorkerDraining || sp.LeasesHeld != 1 || sp.Capacity != 2 ||
		sp.DrainDeadline == nil || !sp.DrainDeadline.Equal(deadline) || sp.DrainKind != "spot-interruption" {
		t.Fatalf("draining worker %+v", sp)
	}
	if stw.State != scheduler.WorkerServing || stw.DrainDeadline != nil {
		t.Fatalf("serving worker %+v", stw)
	}
}

// During a rollout the fleet runs mixed versions: /workers shows the version each bot reported
// in BotSession.version, and one that sends none shows none.
func TestWorkersHandlerShowsVersions(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	for id, v := range map[string]string{"old": "1.2.3", "new": "1.3.0", "unversioned": ""} {
		if _, err := e.bots.CreateBotSession(e.ctx, &rwpb.CreateBotSessionRequest{Parent: "farm",
			BotSession: &rwpb.BotSession{BotId: id, Version: v, Status: rwpb.BotStatus_OK}}); err != nil {
			t.Fatal(err)
		}
	}
	rec := httptest.NewRecorder()
	e.sched.WorkersHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/workers", nil))
	var page struct {
		Workers []map[string]any `json:"workers"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
		t.Fatalf("%v in %s", err, rec.Body)
	}
	got := map[string]any{}
	for _, w := range page.Workers {
		got[w["bot_id"].(string)] = w["version"]
	}
	want := map[string]any{"new": "1.3.0", "old": "1.2.3", "unversioned": nil}
	if len(got) != 3 || got["new"] != want["new"] || got["old"] != want["old"] || got["unversioned"] != nil {
		t.Fatalf("versions %v, want %v\n%s", got, want, rec.Body)
	}
}
