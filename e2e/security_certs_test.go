package e2e_test

import (
	"testing"

	"github.com/buildfleet/buildfleet/internal/testpki"
)

// testPKI is a CA and a server certificate for 127.0.0.1 and localhost, written as PEM files.
type testPKI struct {
	ca, cert, key string
}

// newTestPKI generates the CA and the server key pair in temporary directories.
func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	ca := testpki.NewCA(t, "buildfleet-e2e-ca")
	server := ca.Issue(t, "127.0.0.1", true)
	return testPKI{ca: ca.File, cert: server.CertFile, key: server.KeyFile}
}
