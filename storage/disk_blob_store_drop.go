package storage

import (
	"errors"
	"io/fs"
	"os"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// drop removes blob d from the store if it holds it (with d's size): the local tier of a
// TieredBlobStore forgetting a blob whose upload to the object store failed, so that it never
// serves what the bucket does not have. Readers that opened the blob keep reading its content.
func (s *DiskBlobStore) drop(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || d.IsEmpty() {
		return
	}
	if e, ok := s.index.get(d.Hash); !ok || e.size != d.Size {
		return
	}
	s.index.remove(d.Hash)
	if err := os.Remove(s.path(d.Hash)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.logger.Warn().Err(err).Str("digest", d.String()).Msg("Failed to remove blob from the local tier")
	}
	s.updateGauges()
}
