package auth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/auth"
)

// startTLS serves the test services with ServerCredentials over server's key pair, requiring
// client certificates signed by clientCA when it is set. Authentication is off.
func startTLS(t *testing.T, server *keyPair, clientCA string) (string, *services) {
	t.Helper()
	logger, _ := newLogger()
	creds, err := auth.ServerCredentials(server.CertFile, server.KeyFile, clientCA, logger)
	if err != nil {
		t.Fatal(err)
	}
	authz, err := auth.New(auth.Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, authz, creds)
}

func getCapabilities(t *testing.T, addr, caFile, certFile, keyFile string) error {
	t.Helper()
	creds, err := auth.ClientTransportCredentials(caFile, certFile, keyFile, "", zerologNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = repb.NewCapabilitiesClient(dial(t, addr, creds)).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	return err
}

func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t, "ca")
	otherCA := newTestCA(t, "other-ca")
	server := ca.Issue(t, "server", true)
	client := ca.Issue(t, "client", false)
	stranger := otherCA.Issue(t, "stranger", false)
	addr, svc := startTLS(t, server, ca.File)

	if err := getCapabilities(t, addr, ca.File, client.CertFile, client.KeyFile); err != nil {
		t.Errorf("client with a certificate of the CA: %v", err)
	}
	if err := getCapabilities(t, addr, ca.File, "", ""); status.Code(err) != codes.Unavailable {
		t.Errorf("client without a certificate: got %v, want UNAVAILABLE", err)
	}
	if err := getCapabilities(t, addr, ca.File, stranger.CertFile, stranger.KeyFile); status.Code(err) != codes.Unavailable {
		t.Errorf("client with a certificate of another CA: got %v, want UNAVAILABLE", err)
	}
	if n, _, _ := svc.seen(); n != 1 {
		t.Errorf("%d calls reached the handlers, want 1", n)
	}

	// The refusal happens in the TLS handshake itself, and only for want of a certificate.
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	pair, err := tls.LoadX509KeyPair(client.CertFile, client.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		version uint16
		want    string
	}{{tls.VersionTLS12, "remote error: tls: handshake failure"}, {tls.VersionTLS13, "remote error: tls: certificate required"}} {
		handshake := func(certs []tls.Certificate) error {
			conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}, MaxVersion: tc.version, Certificates: certs})
			if err != nil {
				return err
			}
			defer conn.Close()
			// In TLS 1.3 the client finishes first; the server's verdict arrives with the first read.
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = conn.Read(make([]byte, 1)) // The server's HTTP/2 settings frame.
			return err
		}
		if err := handshake(nil); err == nil || err.Error() != tc.want {
			t.Errorf("TLS %x handshake without a client certificate: got %v, want %s", tc.version, err, tc.want)
		}
		if err := handshake([]tls.Certificate{pair}); err != nil {
			t.Errorf("TLS %x handshake with a client certificate: %v", tc.version, err)
		}
	}
}

func TestServerTLS(t *testing.T) {
	ca := newTestCA(t, "ca")
	server := ca.Issue(t, "server", true)
	addr, _ := startTLS(t, server, "")
	if err := getCapabilities(t, addr, ca.File, "", ""); err != nil {
		t.Errorf("client trusting the CA: %v", err)
	}
	// System roots do not hold the test CA.
	err := getCapabilities(t, addr, "", "", "")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client using the system roots: got %v, want UNAVAILABLE about the certificate", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("a TLS 1.1 handshake succeeded")
	}
}

// servedSerial returns the serial number of the certificate addr serves.
func servedSerial(t *testing.T, addr string, ca *testCA) string {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestServerCertificateRotation(t *testing.T) {
	ca := newTestCA(t, "ca")
	server := ca.Issue(t, "server", true)
	addr, _ := startTLS(t, server, "")
	if got := servedSerial(t, addr, ca); got != server.Serial.String() {
		t.Fatalf("serving serial %s, want %s", got, server.Serial)
	}

	// Rotating the files is picked up by the next handshake.
	next := ca.Issue(t, "server", true)
	writeFile(t, server.CertFile, next.CertPEM)
	writeFile(t, server.KeyFile, next.KeyPEM)
	if got := servedSerial(t, addr, ca); got != next.Serial.String() {
		t.Errorf("after rotation serving serial %s, want %s", got, next.Serial)
	}

	// A half-done rotation (new certificate, old key) keeps the last good pair.
	third := ca.Issue(t, "server", true)
	writeFile(t, server.CertFile, third.CertPEM)
	if got := servedSerial(t, addr, ca); got != next.Serial.String() {
		t.Errorf("with a mismatched pair serving serial %s, want the previous %s", got, next.Serial)
	}
	writeFile(t, server.KeyFile, third.KeyPEM)
	if got := servedSerial(t, addr, ca); got != third.Serial.String() {
		t.Errorf("after completing the rotation serving serial %s, want %s", got, third.Serial)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	ca := newTestCA(t, "ca")
	server := ca.Issue(t, "server", true)
	logger := zerologNop()
	if _, err := auth.ServerTLSConfig(server.CertFile, "", "", logger); err == nil {
		t.Error("ServerTLSConfig without a key: no error")
	}
	if _, err := auth.ServerTLSConfig(server.CertFile, server.CertFile, "", logger); err == nil {
		t.Error("ServerTLSConfig with a certificate as key: no error")
	}
	if _, err := auth.ServerTLSConfig(server.CertFile, server.KeyFile, server.KeyFile, logger); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("ServerTLSConfig with a key as client CA: %v", err)
	}
	cfg, err := auth.ServerTLSConfig(server.CertFile, server.KeyFile, ca.File, logger)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", cfg.MinVersion)
	}
	hs, err := cfg.GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil || hs.ClientAuth != tls.RequireAndVerifyClientCert || hs.MinVersion != tls.VersionTLS12 {
		t.Errorf("handshake config %+v, %v", hs, err)
	}
	if _, err := auth.ClientTransportCredentials(ca.File, server.CertFile, "", "", logger); err == nil {
		t.Error("ClientTransportCredentials with a certificate but no key: no error")
	}
	missing := server.CertFile + ".missing"
	if _, err := auth.ClientTransportCredentials(missing, "", "", "", logger); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("ClientTransportCredentials with a missing CA file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}
