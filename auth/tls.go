package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials"
)

// ServerTLSConfig returns the scheduler's TLS configuration: TLS 1.2 or later with the key pair
// of certFile and keyFile (PEM) and, when clientCAFile is set, mutual TLS: every client must
// present a certificate signed by one of clientCAFile's CAs (RequireAndVerifyClientCert) or the
// handshake fails. The files are checked on every handshake and reloaded when they change
// (certificate rotation needs no restart nor signal); a pair that fails to load, such as a
// certificate written before its key, is logged and the previous one serves until the files
// change again. The first load's errors are returned.
//
// A client certificate is transport-level authentication only: the bearer tokens of the
// Authorizer still decide what a caller may do.
func ServerTLSConfig(certFile, keyFile, clientCAFile string, logger zerolog.Logger) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both a certificate file and a key file")
	}
	logger = logger.With().Str("component", "tls").Logger()
	pair, err := newReloadingFile("TLS key pair", logger, func() (*tls.Certificate, error) {
		return loadKeyPair(certFile, keyFile)
	}, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	var clientCAs *reloadingFile[*x509.CertPool]
	if clientCAFile != "" {
		clientCAs, err = newReloadingFile("TLS client CA", logger, func() (*x509.CertPool, error) {
			return loadCertPool(clientCAFile)
		}, clientCAFile)
		if err != nil {
			return nil, err
		}
	}
	handshakeConfig := func() *tls.Config {
		c := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2"},
			Certificates: []tls.Certificate{*pair.get()},
		}
		if clientCAs != nil {
			c.ClientAuth = tls.RequireAndVerifyClientCert
			c.ClientCAs = clientCAs.get()
		}
		return c
	}
	cfg := handshakeConfig()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return handshakeConfig(), nil
	}
	return cfg, nil
}

// ServerCredentials returns ServerTLSConfig's configuration as gRPC transport credentials, for
// grpc.Creds.
func ServerCredentials(certFile, keyFile, clientCAFile string, logger zerolog.Logger) (credentials.TransportCredentials, error) {
	cfg, err := ServerTLSConfig(certFile, keyFile, clientCAFile, logger)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// ClientTransportCredentials returns the worker's TLS credentials for a grpcs:// scheduler:
// TLS 1.2 or later, verifying the server against caFile's CAs (PEM), or the system roots when
// caFile is empty. certFile and keyFile, both or neither, are the client certificate for a
// scheduler requiring mutual TLS; they are reloaded when they change. serverName, when set,
// overrides the name verified in the server's certificate (by default the target's host).
func ClientTransportCredentials(caFile, certFile, keyFile, serverName string, logger zerolog.Logger) (credentials.TransportCredentials, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pool, err := loadCertPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a TLS client certificate needs both a certificate file and a key file")
	}
	if certFile != "" {
		pair, err := newReloadingFile("TLS client key pair", logger.With().Str("component", "tls").Logger(),
			func() (*tls.Certificate, error) { return loadKeyPair(certFile, keyFile) }, certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return pair.get(), nil
		}
	}
	return credentials.NewTLS(cfg), nil
}

// loadKeyPair loads a PEM certificate chain and its private key.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	return &cert, nil
}

// loadCertPool loads the PEM certificates of file into a pool.
func loadCertPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("loading CA certificates: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("loading CA certificates: no PEM certificate in %s", file)
	}
	return pool, nil
}
