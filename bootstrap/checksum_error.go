package bootstrap

import "fmt"

// ChecksumError reports a downloaded worker whose sha256 is not the expected one, or a download
// made without an expected checksum. Nothing is installed when it is returned.
type ChecksumError struct {
	// URL is where the file came from.
	URL string
	// Expected is the sha256 that was asked for; empty when none was given.
	Expected string
	// Actual is the sha256 of what was downloaded.
	Actual string
	// Size is the number of bytes downloaded.
	Size int64
	// Flag is the flag that gives the expected checksum; "--worker-sha256" when empty.
	Flag string
}

// Error names both digests.
func (e *ChecksumError) Error() string {
	if e.Expected == "" {
		flag := e.Flag
		if flag == "" {
			flag = "--worker-sha256"
		}
		return fmt.Sprintf("no expected sha256 given for %s: expected (none; pass %s), actual sha256 %s (%d bytes); nothing installed",
			e.URL, flag, e.Actual, e.Size)
	}
	return fmt.Sprintf("sha256 mismatch for %s: expected %s, actual %s (%d bytes); nothing installed",
		e.URL, e.Expected, e.Actual, e.Size)
}
