package worker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// maxMessageSize is the gRPC message size the worker accepts and sends: CAS batches of
// 4 MiB of data plus their framing exceed gRPC's 4 MiB default.
const maxMessageSize = 16 << 20

// Dial returns a connection to the scheduler at target: grpc://HOST:PORT (plaintext),
// grpcs://HOST:PORT (TLS, verified against the PEM certificates in caCertFile, or the system
// roots when it is empty), or a bare HOST:PORT (plaintext). The connection reconnects by
// itself; the worker retries its calls with backoff.
func Dial(target, caCertFile string) (*grpc.ClientConn, error) {
	addr, secure, err := ParseSchedulerAddress(target)
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if secure {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if caCertFile != "" {
			pem, err := os.ReadFile(caCertFile)
			if err != nil {
				return nil, fmt.Errorf("reading the CA certificates: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no PEM certificate in %s", caCertFile)
			}
			cfg.RootCAs = pool
		}
		creds = credentials.NewTLS(cfg)
	} else if caCertFile != "" {
		return nil, fmt.Errorf("a CA certificate is given but the scheduler address %q is not grpcs://", target)
	}
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		// gRPC's own reconnection backoff (default: up to 120 s) would otherwise keep the
		// connection down after the scheduler is back, failing the worker's calls at once
		// however short the worker's own backoff (DefaultMaxBackoff): cap it alike.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{
			BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: DefaultMaxBackoff,
		}, MinConnectTimeout: 20 * time.Second}),
	)
}

// ParseSchedulerAddress splits a scheduler address into HOST:PORT and whether it uses TLS.
func ParseSchedulerAddress(target string) (hostPort string, secure bool, err error) {
	rest := target
	if strings.Contains(target, "://") {
		u, err := url.Parse(target)
		if err != nil {
			return "", false, fmt.Errorf("invalid scheduler address %q: %v", target, err)
		}
		switch u.Scheme {
		case "grpc":
		case "grpcs":
			secure = true
		default:
			return "", false, fmt.Errorf("invalid scheduler address %q: scheme must be grpc:// or grpcs://", target)
		}
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
			return "", false, fmt.Errorf("invalid scheduler address %q: want grpc://HOST:PORT", target)
		}
		rest = u.Host
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" || port == "" {
		return "", false, fmt.Errorf("invalid scheduler address %q: want grpc://HOST:PORT or grpcs://HOST:PORT", target)
	}
	return rest, secure, nil
}
