package auth_test

import (
	"bytes"
	"os"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/testpki"
)

// testCA and keyPair are the shared test PKI's types.
type (
	testCA  = testpki.CA
	keyPair = testpki.KeyPair
)

func newTestCA(t *testing.T, name string) *testCA { return testpki.NewCA(t, name) }

func writeFile(t *testing.T, path string, data []byte) { testpki.WriteFile(t, path, data) }

// logBuffer collects log output from concurrent goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger() (zerolog.Logger, *logBuffer) {
	b := &logBuffer{}
	return zerolog.New(b).Level(zerolog.DebugLevel), b
}

func zerologNop() zerolog.Logger { return zerolog.Nop() }

func writeBenchFile(path, data string) error { return os.WriteFile(path, []byte(data), 0o600) }
