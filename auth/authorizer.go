package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Config names the token files of an Authorizer.
type Config struct {
	// ClientTokensFile is the client token file (--client-tokens-file), format on ClientToken.
	ClientTokensFile string
	// WorkerTokensFile is the worker token file (--worker-tokens-file), one token a line.
	WorkerTokensFile string
	// Registerer receives the authorizer's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Authorizer authenticates callers by bearer token and enforces who may call which method on
// which instance name. With neither token file configured, authentication is off and every call
// is allowed; with one or both, every call needs a token (a missing file means "no such tokens").
//
// The method matrix (R, W, X: a client grant with read, write, execute on the instance name of
// the request; "upload" is W or X; workers may use every instance's CAS):
//
//	Capabilities.GetCapabilities                         any client or worker token
//	CAS FindMissingBlobs, BatchReadBlobs, GetTree,
//	    SplitBlob, GetChunkMapping; ByteStream Read      client R, or worker
//	CAS BatchUpdateBlobs, SpliceBlob, RegisterChunkMapping;
//	    ByteStream Write, QueryWriteStatus               client W or X, or worker
//	ActionCache.GetActionResult                          client R (never a worker)
//	ActionCache.UpdateActionResult                       client W (never a worker)
//	Execution.Execute, WaitExecution; Operations.*       client X (never a worker)
//	Bots.CreateBotSession, UpdateBotSession              worker only
//	grpc.health.v1.Health.*                              anyone, no token needed
//	any other method                                     refused
//
// A call without a valid token fails with UNAUTHENTICATED, a call the token does not allow with
// PERMISSION_DENIED naming the method and instance. Tokens are never compared directly, only
// their SHA-256 digests (see tokenSet.lookup), and never logged: logs and errors use TokenID.
type Authorizer struct {
	cfg    Config
	logger zerolog.Logger
	// current is the token set in force; nil when authentication is off.
	current  atomic.Pointer[tokenSet]
	reloadMu sync.Mutex

	denied  *prometheus.CounterVec
	reloads *prometheus.CounterVec
	tokens  *prometheus.GaugeVec
}

// tokenSet is one loaded configuration: the tokens of both files.
type tokenSet struct {
	clients []ClientToken
	workers []WorkerToken
	// index maps a token's SHA-256 to its entry in clients or workers.
	index map[[sha256.Size]byte]tokenEntry
}

// tokenEntry locates a token in a tokenSet.
type tokenEntry struct {
	kind Kind
	i    int
}

// New returns an Authorizer over the token files of cfg, loaded now; a file that cannot be read
// or parsed is an error. Call Reload (or WatchSignals) to pick up later changes.
func New(cfg Config, logger zerolog.Logger) (*Authorizer, error) {
	a := &Authorizer{
		cfg:    cfg,
		logger: logger.With().Str("component", "auth").Logger(),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildfleet_auth_denied_total",
			Help: "Calls refused by authentication (reason unauthenticated) or authorization (reason permission_denied).",
		}, []string{"reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildfleet_auth_reloads_total",
			Help: "Token file reloads by result (success or failure).",
		}, []string{"result"}),
		tokens: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "buildfleet_auth_tokens",
			Help: "Tokens in force by kind (client or worker).",
		}, []string{"kind"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.denied, a.reloads, a.tokens} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("registering auth metrics: %w", err)
			}
		}
	}
	if !a.Enabled() {
		a.logger.Warn().Msg("no client or worker token file configured: authentication is OFF, every caller may do everything")
		return a, nil
	}
	if cfg.ClientTokensFile == "" {
		a.logger.Warn().Msg("no client tokens file configured: every client call will be refused")
	}
	if cfg.WorkerTokensFile == "" {
		a.logger.Warn().Msg("no worker tokens file configured: every worker will be refused")
	}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Enabled reports whether authentication is on, that is whether a token file is configured.
func (a *Authorizer) Enabled() bool {
	return a.cfg.ClientTokensFile != "" || a.cfg.WorkerTokensFile != ""
}

// Reload re-reads the token files. When one cannot be read or parsed, the tokens in force stay
// and the error is logged and returned. It does nothing when authentication is off.
func (a *Authorizer) Reload() error {
	if !a.Enabled() {
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	set, err := a.load()
	if err != nil {
		a.reloads.WithLabelValues("failure").Inc()
		if a.current.Load() != nil {
			a.logger.Error().Err(err).Msg("reloading token files failed; the previous tokens stay in force")
		}
		return err
	}
	a.current.Store(set)
	a.reloads.WithLabelValues("success").Inc()
	a.tokens.WithLabelValues("client").Set(float64(len(set.clients)))
	a.tokens.WithLabelValues("worker").Set(float64(len(set.workers)))
	grants := 0
	for _, c := range set.clients {
		grants += len(c.Grants)
		if c.short {
			a.logger.Warn().Str("file", a.cfg.ClientTokensFile).Int("line", c.Line).Str("token_id", c.ID).
				Msgf("client token is shorter than %d characters: use long random tokens", minTokenLength)
		}
	}
	for _, w := range set.workers {
		if w.short {
			a.logger.Warn().Str("file", a.cfg.WorkerTokensFile).Int("line", w.Line).Str("token_id", w.ID).
				Msgf("worker token is shorter than %d characters: use long random tokens", minTokenLength)
		}
	}
	a.logger.Info().Int("client_tokens", len(set.clients)).Int("client_grants", grants).
		Int("worker_tokens", len(set.workers)).Msg("token files loaded")
	return nil
}

// load reads both token files into a fresh token set.
func (a *Authorizer) load() (*tokenSet, error) {
	set := &tokenSet{}
	var err error
	if a.cfg.ClientTokensFile != "" {
		if set.clients, err = LoadClientTokens(a.cfg.ClientTokensFile); err != nil {
			return nil, err
		}
	}
	if a.cfg.WorkerTokensFile != "" {
		if set.workers, err = LoadWorkerTokens(a.cfg.WorkerTokensFile); err != nil {
			return nil, err
		}
	}
	set.index = make(map[[sha256.Size]byte]tokenEntry, len(set.clients)+len(set.workers))
	for i, c := range set.clients {
		set.index[c.sum] = tokenEntry{kind: Client, i: i}
	}
	for i, w := range set.workers {
		if e, ok := set.index[w.sum]; ok {
			c := set.clients[e.i]
			return nil, fmt.Errorf("%s:%d: token %s is also a client token (%s:%d); client and worker tokens must differ",
				a.cfg.WorkerTokensFile, w.Line, w.ID, a.cfg.ClientTokensFile, c.Line)
		}
		set.index[w.sum] = tokenEntry{kind: Worker, i: i}
	}
	return set, nil
}

// WatchSignals calls Reload for every signal received on signals until ctx is done or signals
// is closed. Pass a channel given to signal.Notify for syscall.SIGHUP; run it in a goroutine.
func (a *Authorizer) WatchSignals(ctx context.Context, signals <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig, ok := <-signals:
			if !ok {
				return
			}
			a.logger.Info().Str("signal", sig.String()).Msg("reloading token files")
			_ = a.Reload() // Logged by Reload.
		}
	}
}

// Authenticate returns the identity holding token. It reports false for an unknown token and
// when authentication is off.
func (a *Authorizer) Authenticate(token string) (Identity, bool) {
	set := a.current.Load()
	if set == nil {
		return Identity{}, false
	}
	return set.lookup(token)
}

// lookup finds the identity holding token. Only SHA-256 digests are compared: the presented
// token's digest selects a candidate by hash-table lookup and crypto/subtle confirms it, so the
// time taken reveals at most how a digest of the caller's own guess compares with stored
// digests, which tells nothing about any stored token, and a lookup costs the same with ten
// tokens or ten thousand.
func (s *tokenSet) lookup(token string) (Identity, bool) {
	sum := sha256.Sum256([]byte(token))
	e, found := s.index[sum]
	if !found {
		return Identity{}, false
	}
	switch e.kind {
	case Client:
		c := s.clients[e.i]
		if subtle.ConstantTimeCompare(sum[:], c.sum[:]) == 1 {
			return Identity{Kind: Client, Name: c.ID, Grants: c.Grants}, true
		}
	case Worker:
		w := s.workers[e.i]
		if subtle.ConstantTimeCompare(sum[:], w.sum[:]) == 1 {
			return Identity{Kind: Worker, Name: w.ID}, true
		}
	}
	return Identity{}, false
}

// MayWriteActionCache reports whether the caller of ctx may write the action cache of instance:
// always when authentication is off, else only a client whose grants give write on instance.
// Its signature fits storage.ServiceOptions.ActionCacheWritable.
func (a *Authorizer) MayWriteActionCache(ctx context.Context, instance string) bool {
	if !a.Enabled() {
		return true
	}
	id, ok := FromContext(ctx)
	return ok && id.Allows(instance, Write)
}
