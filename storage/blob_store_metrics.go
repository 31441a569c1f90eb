package storage

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// blobStoreMetrics are the Prometheus metrics of a DiskBlobStore.
type blobStoreMetrics struct {
	bytes        prometheus.Gauge
	blobs        prometheus.Gauge
	evictions    prometheus.Counter
	evictedBytes prometheus.Counter
	writtenBytes prometheus.Counter
	hits         *prometheus.CounterVec
	misses       *prometheus.CounterVec
	rejected     prometheus.Counter
	corrupt      prometheus.Counter
}

func newBlobStoreMetrics(reg prometheus.Registerer) *blobStoreMetrics {
	const ns, sub = "buildfleet", "blob_store"
	m := &blobStoreMetrics{
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "stored_bytes", Help: "Total size of the blobs held by the disk blob store."}),
		blobs: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "stored_blobs", Help: "Number of blobs held by the disk blob store."}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "evictions_total", Help: "Blobs evicted to stay within the size bound."}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "evicted_bytes_total", Help: "Bytes evicted to stay within the size bound."}),
		writtenBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "written_bytes_total", Help: "Bytes of new blobs committed to the store."}),
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "hits_total", Help: "Lookups that found the blob, by operation."}, []string{"operation"}),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "misses_total", Help: "Lookups that did not find the blob, by operation."}, []string{"operation"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "rejected_writes_total", Help: "Writes refused because the content did not match its digest."}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "corrupt_blobs_total", Help: "Blobs found not to match their digest when verified after an unclean shutdown, and removed."}),
	}
	if reg == nil {
		return m
	}
	m.bytes = register(reg, m.bytes)
	m.blobs = register(reg, m.blobs)
	m.evictions = register(reg, m.evictions)
	m.evictedBytes = register(reg, m.evictedBytes)
	m.writtenBytes = register(reg, m.writtenBytes)
	m.hits = register(reg, m.hits)
	m.misses = register(reg, m.misses)
	m.rejected = register(reg, m.rejected)
	m.corrupt = register(reg, m.corrupt)
	return m
}

// register registers c, or returns the collector already registered under the same name, so
// that a store reopened in the same process keeps reporting through the same series.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(C); ok {
				return existing
			}
		}
		// A conflicting collector under the same name: keep ours unregistered rather than fail.
	}
	return c
}
