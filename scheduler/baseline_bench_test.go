package scheduler_test

import (
	"testing"

	"github.com/buildfleet/buildfleet/internal/benchbaseline"
)

// baselines is the one record of this test binary's baseline figures.
var baselines = benchbaseline.New()

// nsPerOp is the benchmark's measured time per iteration so far, in nanoseconds.
func nsPerOp(b *testing.B) float64 { return benchbaseline.NsPerOp(b) }
