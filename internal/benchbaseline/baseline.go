// Package benchbaseline records figures measured by baseline sub-benchmarks so that the
// sub-benchmark measuring buildfleet beside each one can report its own figures as ratios
// against a baseline taken in the same process, on the same machine, minutes apart at most.
//
// A ratio is buildfleet's cost over the baseline's (time per operation, latency, bytes): 1.0
// means as cheap as the baseline, 3.0 three times as slow or as large. Baselines run first (they
// are declared first), and the last run of a sub-benchmark, the one the framework reports, is
// the one recorded.
package benchbaseline

import (
	"sync"
	"testing"
)

// Figures holds the baseline figures of one test binary's run.
type Figures struct {
	mu sync.Mutex
	m  map[string]float64
}

// New returns an empty record.
func New() *Figures { return &Figures{m: map[string]float64{}} }

// Record stores a baseline figure under key and reports it as metric unit (none when empty).
func (f *Figures) Record(b *testing.B, key string, v float64, unit string) {
	b.Helper()
	f.mu.Lock()
	f.m[key] = v
	f.mu.Unlock()
	if unit != "" {
		b.ReportMetric(v, unit)
	}
}

// Ratio reports v over the baseline recorded under key as metric unit, or logs that there is
// no baseline from this run to compare with (a -bench pattern that filters it out).
func (f *Figures) Ratio(b *testing.B, key string, v float64, unit string) {
	b.Helper()
	f.mu.Lock()
	base, ok := f.m[key]
	f.mu.Unlock()
	if !ok || base <= 0 {
		b.Logf("no baseline %q measured in this run: no %s reported", key, unit)
		return
	}
	b.ReportMetric(v/base, unit)
}

// NsPerOp is the benchmark's measured time per iteration so far, in nanoseconds.
func NsPerOp(b *testing.B) float64 {
	if b.N == 0 {
		return 0
	}
	return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
}
