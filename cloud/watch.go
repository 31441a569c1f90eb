package cloud

import (
	"context"
	"sync"

	"github.com/rs/zerolog"
)

// Watch runs every source until ctx is done and merges their notices into the returned channel,
// which is closed once all sources have returned. A source that fails (returns an error) is
// logged with the logger in ctx (zerolog.Ctx) while the others go on.
func Watch(ctx context.Context, sources ...Source) <-chan Notice {
	out := make(chan Notice, 16)
	var wg sync.WaitGroup
	for _, s := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Watch(ctx, out); err != nil {
				zerolog.Ctx(ctx).Error().Err(err).Str("source", s.Name()).Msg("Interruption source stopped")
			}
		}()
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out
}
