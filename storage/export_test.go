package storage

// Crash abandons the store the way a crashed process does: the directory lock is released
// (the kernel closes a dead process's descriptors) with no file system sync and no
// clean-shutdown marker, and the background verification stops. Tests use it to reopen a
// store as it is after a crash.
func (s *DiskBlobStore) Crash() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	if s.stopVerify != nil {
		close(s.stopVerify)
		<-s.verifyDone
	}
	s.lock.Close()
}

// WaitForRefreshes returns once the background refreshes of blobs read from the local tier
// that have started so far have ended.
func (t *TieredBlobStore) WaitForRefreshes() { t.remote.bg.wait() }
