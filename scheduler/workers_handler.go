package scheduler

import (
	"encoding/json"
	"net/http"
	"time"
)

// workerJSON is one worker as the /workers page shows it.
type workerJSON struct {
	BotID         string     `json:"bot_id"`
	Version       string     `json:"version,omitempty"`
	Session       string     `json:"session"`
	State         string     `json:"state"`
	Status        string     `json:"status"`
	Capacity      int        `json:"capacity"`
	LeasesHeld    int        `json:"leases_held"`
	LeaseIDs      []string   `json:"lease_ids,omitempty"`
	Properties    []string   `json:"properties,omitempty"`
	LastSeen      time.Time  `json:"last_seen"`
	ExpireTime    *time.Time `json:"expire_time,omitempty"`
	DrainingSince *time.Time `json:"draining_since,omitempty"`
	DrainDeadline *time.Time `json:"drain_deadline,omitempty"`
	DrainKind     string     `json:"drain_kind,omitempty"`
	DrainReason   string     `json:"drain_reason,omitempty"`
	GoneSince     *time.Time `json:"gone_since,omitempty"`
	LongPolling   bool       `json:"long_polling"`
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// WorkersHandler serves the worker view (Workers) as JSON: each worker's state (serving,
// draining with its deadline, unavailable, gone), capacity and leases. Operators read it at
// /workers on the metrics address.
func (s *Scheduler) WorkersHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		infos := s.Workers()
		out := make([]workerJSON, 0, len(infos))
		for _, i := range infos {
			out = append(out, workerJSON{
				BotID: i.BotID, Version: i.Version, Session: i.Session, State: i.State, Status: i.Status,
				Capacity: i.Capacity, LeasesHeld: i.LeasesHeld, LeaseIDs: i.LeaseIDs, Properties: i.Properties,
				LastSeen: i.LastSeen, ExpireTime: optionalTime(i.ExpireTime),
				DrainingSince: optionalTime(i.DrainingSince), DrainDeadline: optionalTime(i.DrainDeadline),
				DrainKind: i.DrainKind, DrainReason: i.DrainReason, GoneSince: optionalTime(i.GoneSince),
				LongPolling: i.LongPolling,
			})
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{"workers": out})
	})
}
