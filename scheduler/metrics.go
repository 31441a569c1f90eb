package scheduler

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Requeue reasons, the "reason" label of buildfleet_scheduler_leases_requeued_total.
const (
	requeueExpired    = "expired"      // the bot session expired
	requeueHandedBack = "handed-back"  // a draining bot handed the lease back
	requeueRetry      = "retry"        // the lease completed with INTERNAL or UNAVAILABLE
	requeueLost       = "lost"         // the bot stopped reporting the lease, or was replaced
	requeueGone       = "disconnected" // the bot's connection ended and it did not come back
)

// metrics are the scheduler's Prometheus collectors.
type metrics struct {
	queueDepth      *prometheus.GaugeVec
	workers         *prometheus.GaugeVec
	leasesHanded    prometheus.Counter
	leasesAdopted   prometheus.Counter
	leasesCompleted prometheus.Counter
	leasesRequeued  *prometheus.CounterVec
	actions         *prometheus.CounterVec
	drainNotices    *prometheus.CounterVec
	drainFinished   prometheus.Counter
	workerSlots     *prometheus.GaugeVec

	// The children of workers and workerSlots, resolved once: they are set whenever a lease
	// is handed out or finished.
	workersServing, workersDraining, workersUnavailable, workersGone prometheus.Gauge
	slotsBusy, slotsIdle, slotsDraining                              prometheus.Gauge
}

// Slot states, the "state" label of buildfleet_scheduler_worker_slots.
const (
	slotBusy     = "busy"     // leases held by serving bots
	slotIdle     = "idle"     // free capacity of serving bots: what new work can use at once
	slotDraining = "draining" // leases still held by draining bots, soon to be freed or handed back
)

// newMetrics creates the collectors and registers them with reg (nil: not registered). A
// collector already registered by an earlier scheduler on the same registerer is reused.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "queue_depth",
			Help: "Queued actions per platform (canonical key=value list; \"default\" for none).",
		}, []string{"platform"}),
		workers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "workers",
			Help: "Bot sessions by state (serving, draining, unavailable, gone).",
		}, []string{"state"}),
		leasesHanded: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "leases_handed_out_total",
			Help: "Leases handed out to bots.",
		}),
		leasesAdopted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "leases_adopted_total",
			Help: "Leases a bot reported that this scheduler never handed out (a failover or restart), adopted instead of run again.",
		}),
		leasesCompleted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "leases_completed_total",
			Help: "Leases reported COMPLETED by bots.",
		}),
		leasesRequeued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "leases_requeued_total",
			Help: "Leases whose action was queued again, by reason (expired, handed-back, retry, lost, disconnected).",
		}, []string{"reason"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "actions_completed_total",
			Help: "Finished actions by outcome (executed, cached, failed, cancelled); its rate is actions per second.",
		}, []string{"outcome"}),
		drainNotices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "drain_notices_total",
			Help: "Bots that reported BOT_TERMINATING, by the kind of notice they gave in worker.configs[\"drain-kind\"] (spot-interruption, preemption, signal, …; unspecified when none).",
		}, []string{"kind"}),
		drainFinished: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "drain_actions_finished_total",
			Help: "Action results accepted from bots while they were draining (work saved by draining rather than handed back).",
		}),
		workerSlots: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "buildfleet", Subsystem: "scheduler", Name: "worker_slots",
			Help: "Action slots of live bots by state: busy (leases of serving bots), idle (free capacity of serving bots), draining (leases still held by draining bots).",
		}, []string{"state"}),
	}
	if reg != nil {
		m.register(reg)
	}
	m.workersServing = m.workers.WithLabelValues(WorkerServing)
	m.workersDraining = m.workers.WithLabelValues(WorkerDraining)
	m.workersUnavailable = m.workers.WithLabelValues(WorkerUnavailable)
	m.workersGone = m.workers.WithLabelValues(WorkerGone)
	m.slotsBusy = m.workerSlots.WithLabelValues(slotBusy)
	m.slotsIdle = m.workerSlots.WithLabelValues(slotIdle)
	m.slotsDraining = m.workerSlots.WithLabelValues(slotDraining)
	return m
}

// clearGauges sets the gauges to zero when the scheduler closes: a replica whose term ended
// (--ha=etcd) keeps its counters but exports no stale queue or worker counts.
func (m *metrics) clearGauges() {
	m.queueDepth.Reset()
	for _, g := range []prometheus.Gauge{m.workersServing, m.workersDraining, m.workersUnavailable, m.workersGone,
		m.slotsBusy, m.slotsIdle, m.slotsDraining} {
		g.Set(0)
	}
}

// register registers the collectors with reg, keeping those an earlier scheduler registered.
func (m *metrics) register(reg prometheus.Registerer) {
	m.queueDepth = register(reg, m.queueDepth)
	m.workers = register(reg, m.workers)
	m.leasesHanded = register(reg, m.leasesHanded)
	m.leasesAdopted = register(reg, m.leasesAdopted)
	m.leasesCompleted = register(reg, m.leasesCompleted)
	m.leasesRequeued = register(reg, m.leasesRequeued)
	m.actions = register(reg, m.actions)
	m.drainNotices = register(reg, m.drainNotices)
	m.drainFinished = register(reg, m.drainFinished)
	m.workerSlots = register(reg, m.workerSlots)
}

// register registers c, returning the collector already registered in its place if any.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}
