package bootstrap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// SHA256SUMSName is the checksum file of a release: one "HEX  NAME" line per file (the format
// of sha256sum and goreleaser), for every archive, package and raw binary of the release.
const SHA256SUMSName = "SHA256SUMS"

// maxSHA256SUMSSize bounds the checksum file read into memory.
const maxSHA256SUMSSize = 1 << 20

// ReleaseAssetName returns the name of a raw binary in a release, e.g. "worker-linux-amd64"
// for program "worker" and arch "amd64" (Go's GOARCH names).
func ReleaseAssetName(program, arch string) string { return program + "-linux-" + arch }

// ReleaseFileURL returns where file name of release version lives under base:
// BASE/VERSION/NAME (GitHub's …/releases/download/v1.2.3/NAME, or a bucket laid out the same
// way).
func ReleaseFileURL(base, version, name string) string {
	return strings.TrimRight(base, "/") + "/" + url.PathEscape(version) + "/" + name
}

var releaseVersionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)

// ValidReleaseVersion reports whether v can name a release directory (v1.2.3, 1.2.3-rc.1):
// letters, digits, '.', '_', '+', '-', no slashes and no leading dot.
func ValidReleaseVersion(v string) bool { return releaseVersionRE.MatchString(v) }

// ParseSHA256SUMS parses a checksum file into name → lowercase hex sha256. Lines are "HEX  NAME"
// or "HEX *NAME" (binary mode); blank lines are skipped; anything else is an error, as is a
// name listed twice.
func ParseSHA256SUMS(data []byte) (map[string]string, error) {
	sums := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		hexSum, name, ok := strings.Cut(line, " ")
		name = strings.TrimPrefix(strings.TrimPrefix(name, " "), "*")
		if b, err := hex.DecodeString(hexSum); !ok || err != nil || len(b) != sha256.Size || name == "" {
			return nil, fmt.Errorf("%s line %d is not \"SHA256  NAME\": %q", SHA256SUMSName, n, line)
		}
		if _, dup := sums[name]; dup {
			return nil, fmt.Errorf("%s lists %s twice", SHA256SUMSName, name)
		}
		sums[name] = strings.ToLower(hexSum)
	}
	return sums, sc.Err()
}

// ReleaseResolver finds a release's worker binary and its sha256: it downloads the release's
// SHA256SUMS, checks the file's own sha256 against the operator's pin (one pin covers every
// architecture), and looks up the worker for the machine's architecture in it.
type ReleaseResolver struct {
	// Source opens the URLs.
	Source Source
	// Clock times the waits between attempts.
	Clock clock.Clock
	// Retry is the backoff between attempts.
	Retry RetryPolicy
	// Steps logs (or, on a dry run, prints) what is checked.
	Steps *StepLog
}

// Resolve returns the URL and expected sha256 of the worker for arch in release version under
// base, given sumsSHA256, the pinned sha256 of the release's SHA256SUMS. A checksum file that
// does not match the pin is a *ChecksumError; nothing is downloaded after it.
func (r *ReleaseResolver) Resolve(ctx context.Context, base, version, sumsSHA256, arch string, allowInsecure bool) (workerURL, workerSHA256 string, err error) {
	sumsURL := ReleaseFileURL(base, version, SHA256SUMSName)
	parsed, err := ParseReleaseURL(sumsURL, allowInsecure)
	if err != nil {
		return "", "", err
	}
	data, err := r.fetch(ctx, parsed)
	if err != nil {
		return "", "", fmt.Errorf("downloading %s: %w", redact(parsed), err)
	}
	h := sha256.Sum256(data)
	actual := hex.EncodeToString(h[:])
	if expected := strings.ToLower(sumsSHA256); actual != expected {
		return "", "", &ChecksumError{URL: redact(parsed), Expected: expected, Actual: actual, Size: int64(len(data)),
			Flag: "--release-sha256sums-sha256"}
	}
	sums, err := ParseSHA256SUMS(data)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", redact(parsed), err)
	}
	name := ReleaseAssetName("worker", arch)
	sum, ok := sums[name]
	if !ok {
		return "", "", fmt.Errorf("release %s has no %s (its %s lists no such file); nothing installed", version, name, SHA256SUMSName)
	}
	r.Steps.Note(fmt.Sprintf("%s matches the pinned sha256 %s; it lists %s with sha256 %s", redact(parsed), actual, name, sum))
	return ReleaseFileURL(base, version, name), sum, nil
}

// fetch reads the whole (small) object at u, retrying as binary downloads do.
func (r *ReleaseResolver) fetch(ctx context.Context, u *url.URL) ([]byte, error) {
	var data []byte
	err := r.Retry.Do(ctx, r.Clock, func(int) error {
		body, size, err := r.Source.Open(ctx, u)
		if err != nil {
			return err
		}
		defer body.Close()
		data, err = io.ReadAll(io.LimitReader(body, maxSHA256SUMSSize+1))
		switch {
		case err != nil:
			return fmt.Errorf("reading body after %d bytes: %w", len(data), err)
		case len(data) > maxSHA256SUMSSize:
			return Permanent(fmt.Errorf("larger than %d bytes: not a checksum file", maxSHA256SUMSSize))
		case size >= 0 && int64(len(data)) != size:
			return fmt.Errorf("short body: got %d of %d bytes", len(data), size)
		}
		return nil
	}, func(attempt int, err error, wait time.Duration) {
		r.Steps.Logger.Warn().Err(err).Int("attempt", attempt).Dur("wait", wait).Str("url", redact(u)).
			Msg("download failed; retrying")
	})
	return data, err
}
