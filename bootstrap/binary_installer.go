package bootstrap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// BinaryInstaller downloads an executable, verifies its sha256 while streaming it into a
// temporary file next to its destination, and renames it into place with mode 0755.
type BinaryInstaller struct {
	// Source opens the URL.
	Source Source
	// Clock times the waits between attempts.
	Clock clock.Clock
	// Retry is the backoff between attempts.
	Retry RetryPolicy
	// Steps runs (or, on a dry run, prints) each step.
	Steps *StepLog
}

// tempPrefix names the temporary files next to the destination; stale ones from a crash are
// removed by the next run.
func tempPrefix(dest string) string { return "." + filepath.Base(dest) + ".download-" }

// Install makes dest hold the file at u with sha256 expected (lowercase hex). If dest already
// has that checksum nothing is downloaded and changed is false. On any error, including a
// checksum mismatch (a *ChecksumError), dest is left as it was.
func (i *BinaryInstaller) Install(ctx context.Context, u string, allowInsecure bool, expected, dest string) (changed bool, err error) {
	parsed, err := ParseWorkerURL(u, allowInsecure)
	if err != nil {
		return false, err
	}
	expected = strings.ToLower(expected)
	if expected != "" {
		if have, err := fileSHA256(dest); err == nil && have == expected {
			st, err := os.Stat(dest)
			if err == nil && st.Mode().Perm() == 0o755 {
				i.Steps.Note(fmt.Sprintf("%s already has sha256 %s; not downloading", dest, expected))
				return false, nil
			}
			return false, i.Steps.Do(fmt.Sprintf("chmod 0755 %s (content already up to date)", dest), func() error {
				return os.Chmod(dest, 0o755)
			})
		}
	}
	dir := filepath.Dir(dest)
	desc := fmt.Sprintf("download %s, verify sha256 %s, install to %s (mode 0755, atomic rename)", redact(parsed), orNone(expected), dest)
	err = i.Steps.Do(desc, func() error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
		removeStale(dir, tempPrefix(dest))
		return i.download(ctx, parsed, expected, dest)
	})
	return err == nil, err
}

func (i *BinaryInstaller) download(ctx context.Context, parsed *url.URL, expected, dest string) error {
	tmp, err := os.CreateTemp(filepath.Dir(dest), tempPrefix(dest)+"*")
	if err != nil {
		return fmt.Errorf("creating temporary file: %w", err)
	}
	installed := false
	defer func() {
		if !installed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	var n int64
	err = i.Retry.Do(ctx, i.Clock, func(attempt int) error {
		var err error
		n, err = i.fetchOnce(ctx, parsed, tmp, h)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		i.Steps.Logger.Warn().Err(err).Int("attempt", attempt).Dur("wait", wait).Str("url", redact(parsed)).
			Msg("download failed; retrying")
	})
	if err != nil {
		return fmt.Errorf("downloading %s: %w", redact(parsed), err)
	}
	actual := hex.EncodeToString(h.Sum(nil))
	if expected == "" || actual != expected {
		return &ChecksumError{URL: redact(parsed), Expected: expected, Actual: actual, Size: n}
	}
	if err := tmp.Chmod(0o755); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return fmt.Errorf("installing %s: %w", dest, err)
	}
	installed = true
	syncDir(filepath.Dir(dest))
	i.Steps.Logger.Info().Str("path", dest).Str("sha256", actual).Int64("bytes", n).Msg("worker installed")
	return nil
}

// fetchOnce makes one attempt: it truncates tmp and h, streams the object into both and checks
// the byte count against the announced size.
func (i *BinaryInstaller) fetchOnce(ctx context.Context, u *url.URL, tmp *os.File, h hash.Hash) (int64, error) {
	if err := tmp.Truncate(0); err != nil {
		return 0, Permanent(err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, Permanent(err)
	}
	h.Reset()
	body, size, err := i.Source.Open(ctx, u)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	n, err := io.Copy(io.MultiWriter(tmp, h), body)
	if err != nil {
		return n, fmt.Errorf("reading body after %d bytes: %w", n, err)
	}
	if size >= 0 && n != size {
		return n, fmt.Errorf("short body: got %d of %d bytes", n, size)
	}
	return n, nil
}

func orNone(s string) string {
	if s == "" {
		return "(none given)"
	}
	return s
}

// fileSHA256 returns the hex sha256 of the file at path.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// removeStale deletes temporary files a crashed run left in dir.
func removeStale(dir, prefix string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// syncDir flushes a directory so a rename in it survives a crash.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
