package cloud

import "github.com/rs/zerolog"

// reachability tracks whether a metadata endpoint answers, so that a machine that is simply not
// on that cloud stays quiet (Debug logs only) while an endpoint that answered before and then
// went away, or came back, is worth a Warn or an Info line.
type reachability struct {
	log      zerolog.Logger
	ever     bool
	up       bool
	failures int
}

// ok records a successful exchange.
func (r *reachability) ok() {
	if r.ever && !r.up {
		r.log.Info().Int("failed_attempts", r.failures).Msg("Metadata service reachable again")
	} else if !r.ever {
		r.log.Debug().Msg("Metadata service reachable")
	}
	r.ever, r.up, r.failures = true, true, 0
}

// failed records a failed exchange and returns the number of consecutive failures.
func (r *reachability) failed(err error) int {
	r.failures++
	if r.up {
		r.log.Warn().Err(err).Msg("Metadata service stopped answering; still watching")
	} else {
		r.log.Debug().Err(err).Int("failed_attempts", r.failures).Msg("Metadata service unreachable")
	}
	r.up = false
	return r.failures
}
