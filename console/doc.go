// Package console is buildfleet's web console: server-rendered, read-only pages over the
// scheduler's views (scheduler.Scheduler's snapshot methods) and storage (the CAS and action
// cache), served on the scheduler's HTTP address beside /metrics, /healthz and /workers.
//
// Pages (all under /console/): fleet (workers, their state and drain countdown, the
// preemption timeline), queue (depth and oldest wait by instance name and platform,
// throughput and cache hit ratio), builds (executions grouped by the client's tool invocation)
// and one build, one worker, and the action page by digest (Action, Command, input root tree,
// ActionResult with stdout and stderr, execution timeline). Pages refresh themselves by polling
// with a small script (static/console.js); there is no front-end build.
//
// Access: with token files configured, every page needs a client token with read permission on
// some instance name (a login form sets a cookie; an Authorization: Bearer header works too)
// and shows only what that token may read. Without token files, only loopback callers are
// served.
package console
