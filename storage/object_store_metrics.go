package storage

import "github.com/prometheus/client_golang/prometheus"

// objectStoreMetrics are the Prometheus metrics of an ObjectBlobStore and the TieredBlobStore
// in front of it.
type objectStoreMetrics struct {
	existenceChecks *prometheus.CounterVec
	refreshes       prometheus.Counter
	corrupt         prometheus.Counter
	fills           prometheus.Counter
	fillBytes       prometheus.Counter
	uploads         prometheus.Counter
	uploadBytes     prometheus.Counter
}

func newObjectStoreMetrics(reg prometheus.Registerer) *objectStoreMetrics {
	const ns, sub = "buildfleet", "object_store"
	m := &objectStoreMetrics{
		existenceChecks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "existence_checks_total", Help: "Blobs checked for presence, by result: cached (answered by the existence cache), present, missing."}, []string{"result"}),
		refreshes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "refreshes_total", Help: "Objects refreshed in the bucket because they were used past the refresh age."}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "corrupt_objects_total", Help: "Objects whose content did not match their digest, answered as misses and deleted."}),
		fills: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "local_tier_fills_total", Help: "Blobs downloaded from the bucket into the local tier."}),
		fillBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "local_tier_fill_bytes_total", Help: "Bytes downloaded from the bucket into the local tier."}),
		uploads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "uploads_total", Help: "Blobs written to the bucket."}),
		uploadBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "upload_bytes_total", Help: "Bytes of blobs written to the bucket."}),
	}
	if reg == nil {
		return m
	}
	m.existenceChecks = register(reg, m.existenceChecks)
	m.refreshes = register(reg, m.refreshes)
	m.corrupt = register(reg, m.corrupt)
	m.fills = register(reg, m.fills)
	m.fillBytes = register(reg, m.fillBytes)
	m.uploads = register(reg, m.uploads)
	m.uploadBytes = register(reg, m.uploadBytes)
	return m
}
