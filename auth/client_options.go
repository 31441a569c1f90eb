package auth

import (
	"errors"
	"fmt"
	"os"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ClientConfig is how a worker authenticates to the scheduler and secures the connection.
type ClientConfig struct {
	// Address is the scheduler's HOST:PORT.
	Address string
	// Secure selects TLS (a grpcs:// address).
	Secure bool
	// CAFile, CertFile, KeyFile and ServerName are those of ClientTransportCredentials; they
	// need Secure.
	CAFile, CertFile, KeyFile, ServerName string
	// TokenFile and TokenEnvVar name the worker token, as LoadTokenCredentials takes them.
	TokenFile, TokenEnvVar string
}

// ClientDialOptions returns the dial options carrying cfg's transport credentials (TLS or
// plaintext) and, when a token is configured, the TokenCredentials sending it, which it also
// returns. A token read from an environment variable is removed from the process environment
// so that nothing the worker starts inherits it. Sending a token over plaintext to a host that
// is not loopback is allowed, with a loud warning: anyone on the path can read and replay it.
func ClientDialOptions(cfg ClientConfig, logger zerolog.Logger) ([]grpc.DialOption, *TokenCredentials, error) {
	var opts []grpc.DialOption
	if cfg.Secure {
		creds, err := ClientTransportCredentials(cfg.CAFile, cfg.CertFile, cfg.KeyFile, cfg.ServerName, logger)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(creds))
	} else {
		if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" || cfg.ServerName != "" {
			return nil, nil, errors.New("TLS options are given but the scheduler address is not grpcs://")
		}
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	token, err := LoadTokenCredentials(cfg.TokenFile, cfg.TokenEnvVar, logger)
	if err != nil {
		return nil, nil, err
	}
	if token == nil {
		return opts, nil, nil
	}
	if cfg.TokenEnvVar != "" {
		// The kernel's copy of the initial environment (/proc/PID/environ) keeps it: only the
		// worker's own user and root can read that, hence --run-as-user.
		if err := os.Unsetenv(cfg.TokenEnvVar); err != nil {
			return nil, nil, fmt.Errorf("removing the auth token variable %s from the environment: %w", cfg.TokenEnvVar, err)
		}
	}
	if !cfg.Secure && !IsLoopbackListen(cfg.Address) {
		logger.Warn().Str("scheduler", cfg.Address).Str("token_id", token.ID).
			Msg("INSECURE: the worker token is sent in clear text over grpc:// to a host that is not loopback; anyone on the path can read and replay it: use grpcs://")
	}
	return append(opts, grpc.WithPerRPCCredentials(token)), token, nil
}
