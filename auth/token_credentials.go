package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TokenCredentials are the worker's per-RPC credentials: they send `authorization: Bearer TOKEN`
// on every call, the token coming from a file (re-read when it changes) or from an environment
// variable (read once). They implement credentials.PerRPCCredentials; pass them to
// grpc.WithPerRPCCredentials.
//
// RequireTransportSecurity is false so that a worker can reach a scheduler on loopback over
// plain grpc://. Over plain TCP to another host the token travels in clear text and anyone on
// the path can read and replay it: use grpcs:// for any non-loopback scheduler.
type TokenCredentials struct {
	// ID is the token's masked identifier (see TokenID) at construction, safe to log.
	ID string

	source *reloadingFile[string] // nil for a token from the environment.
	token  string
}

// LoadTokenCredentials returns the credentials named by the worker's flags: the token in
// tokenFile (--auth-token-file) or in the environment variable envVarName
// (--auth-token-env-var-name). It returns nil and no error when both are empty, and an error
// when both are set or the token is missing, empty or not printable ASCII.
func LoadTokenCredentials(tokenFile, envVarName string, logger zerolog.Logger) (*TokenCredentials, error) {
	switch {
	case tokenFile != "" && envVarName != "":
		return nil, errors.New("give the auth token either in a file or in an environment variable, not both")
	case tokenFile != "":
		return NewFileTokenCredentials(tokenFile, logger)
	case envVarName != "":
		return NewEnvTokenCredentials(envVarName)
	}
	return nil, nil
}

// NewFileTokenCredentials returns credentials sending the token held in path, trimmed of
// surrounding white space. The file is checked on every call and re-read when it changes; a
// version that cannot be read or holds no valid token is logged and the previous token kept.
func NewFileTokenCredentials(path string, logger zerolog.Logger) (*TokenCredentials, error) {
	source, err := newReloadingFile("auth token file", logger.With().Str("component", "auth").Logger(),
		func() (string, error) {
			b, err := os.ReadFile(path)
			if err != nil {
				return "", fmt.Errorf("reading the auth token: %w", err)
			}
			token := strings.TrimSpace(string(b))
			if err := checkCredentialToken(token); err != nil {
				return "", fmt.Errorf("auth token file %s: %w", path, err)
			}
			return token, nil
		}, path)
	if err != nil {
		return nil, err
	}
	return &TokenCredentials{ID: TokenID(source.get()), source: source}, nil
}

// NewEnvTokenCredentials returns credentials sending the token held in the environment
// variable name, read now and trimmed of surrounding white space. The variable stays set: the
// caller may unset it, and actions never inherit the worker's environment.
func NewEnvTokenCredentials(name string) (*TokenCredentials, error) {
	token := strings.TrimSpace(os.Getenv(name))
	if err := checkCredentialToken(token); err != nil {
		return nil, fmt.Errorf("auth token environment variable %s: %w", name, err)
	}
	return &TokenCredentials{ID: TokenID(token), token: token}, nil
}

// checkCredentialToken refuses an empty token or one that cannot be sent in a header.
func checkCredentialToken(token string) error {
	if token == "" {
		return errors.New("empty token")
	}
	return checkToken(token)
}

// current returns the token to send now.
func (c *TokenCredentials) current() string {
	if c.source != nil {
		return c.source.get()
	}
	return c.token
}

// GetRequestMetadata returns the authorization header of one call.
func (c *TokenCredentials) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token := c.current()
	if token == "" {
		return nil, status.Error(codes.Unauthenticated, "no auth token available")
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity returns false: the token is also sent over plain connections, which
// is safe only on loopback (see TokenCredentials).
func (c *TokenCredentials) RequireTransportSecurity() bool { return false }
