package auth

import (
	"context"
	"strings"
	"sync"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ServerOptions returns the gRPC server options installing the authorizer's unary and stream
// interceptors; pass them to grpc.NewServer.
func (a *Authorizer) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(a.StreamServerInterceptor()),
	}
}

// UnaryServerInterceptor returns the interceptor authorizing unary calls. The handler runs with
// the caller's Identity in its context (see FromContext).
func (a *Authorizer) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		set := a.current.Load()
		if set == nil {
			return handler(ctx, req)
		}
		rule, known := methodRules[info.FullMethod]
		if known && rule.public {
			return handler(ctx, req)
		}
		id, err := a.identify(ctx, set, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if err := a.permitCaller(ctx, id, info.FullMethod, rule, known); err != nil {
			return nil, err
		}
		if err := a.permitInstance(ctx, id, info.FullMethod, rule, req); err != nil {
			return nil, err
		}
		return handler(NewContext(ctx, id), req)
	}
}

// StreamServerInterceptor returns the interceptor authorizing streaming calls. The caller is
// authenticated when the stream opens; the instance name is checked on the first message
// received, whose RecvMsg fails with the refusal (and so does every later RecvMsg and any
// SendMsg before the check passed).
func (a *Authorizer) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		set := a.current.Load()
		if set == nil {
			return handler(srv, ss)
		}
		rule, known := methodRules[info.FullMethod]
		if known && rule.public {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		id, err := a.identify(ctx, set, info.FullMethod)
		if err != nil {
			return err
		}
		if err := a.permitCaller(ctx, id, info.FullMethod, rule, known); err != nil {
			return err
		}
		ctx = NewContext(ctx, id)
		if id.Kind != Client || rule.instance == nil {
			return handler(srv, &identityStream{ServerStream: ss, ctx: ctx})
		}
		return handler(srv, &checkingStream{
			ServerStream: ss,
			ctx:          ctx,
			check: func(msg any) error {
				return a.permitInstance(ctx, id, info.FullMethod, rule, msg)
			},
		})
	}
}

// identify authenticates the bearer token of ctx's metadata against set.
func (a *Authorizer) identify(ctx context.Context, set *tokenSet, method string) (Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	var reason string
	switch {
	case len(values) == 0:
		reason = "Missing credentials for %s: send the gRPC header \"authorization: Bearer TOKEN\""
	case len(values) > 1 && !allEqual(values):
		reason = "Differing authorization headers in the call to %s"
	default:
		scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			reason = "The authorization header of the call to %s is not \"Bearer TOKEN\""
			break
		}
		token = strings.TrimSpace(token)
		if id, ok := set.lookup(token); ok {
			return id, nil
		}
		a.denied.WithLabelValues("unauthenticated").Inc()
		a.logDenial(ctx, zerolog.InfoLevel, method).Str("token_id", TokenID(token)).Msg("unknown bearer token")
		return Identity{}, status.Errorf(codes.Unauthenticated, "Unknown bearer token %s in the call to %s", TokenID(token), method)
	}
	a.denied.WithLabelValues("unauthenticated").Inc()
	err := status.Errorf(codes.Unauthenticated, reason, method)
	a.logDenial(ctx, zerolog.DebugLevel, method).Msg(status.Convert(err).Message())
	return Identity{}, err
}

// allEqual reports whether every value equals the first (a client may send its header twice,
// say from both a bearer token option and a headers option).
func allEqual(values []string) bool {
	for _, v := range values[1:] {
		if v != values[0] {
			return false
		}
	}
	return true
}

// permitCaller checks what does not depend on the request: whether the method is served at
// all, and to the caller's kind of identity.
func (a *Authorizer) permitCaller(ctx context.Context, id Identity, method string, rule methodRule, known bool) error {
	var msg string
	switch {
	case !known:
		msg = "method is not served to token holders"
	case rule.anyCaller:
		return nil
	case id.Kind == Worker && !rule.worker:
		msg = "worker tokens may not call this method"
	case id.Kind == Worker:
		return nil
	case rule.client == 0:
		msg = "client tokens may not call this method"
	default:
		return nil
	}
	a.denied.WithLabelValues("permission_denied").Inc()
	a.logDenial(ctx, zerolog.InfoLevel, method).Str("identity", id.Name).Str("kind", id.Kind.String()).Msg(msg)
	return status.Errorf(codes.PermissionDenied, "Permission denied: %s %s may not call %s", id.Kind, id.Name, method)
}

// permitInstance checks a client's grants on the instance name of req.
func (a *Authorizer) permitInstance(ctx context.Context, id Identity, method string, rule methodRule, req any) error {
	if id.Kind != Client || rule.anyCaller || rule.instance == nil {
		return nil
	}
	instance, err := rule.instance(req)
	if err != nil {
		return err
	}
	if id.PermissionsOn(instance)&rule.client != 0 {
		return nil
	}
	need := strings.ReplaceAll(rule.client.String(), ",", " or ")
	a.denied.WithLabelValues("permission_denied").Inc()
	a.logDenial(ctx, zerolog.InfoLevel, method).Str("identity", id.Name).Str("instance", instance).
		Str("needs", need).Msg("client token lacks the permission on this instance")
	return status.Errorf(codes.PermissionDenied, "Permission denied: client %s may not call %s on instance %q (needs %s)",
		id.Name, method, instance, need)
}

// logDenial starts a log event about a refused call.
func (a *Authorizer) logDenial(ctx context.Context, level zerolog.Level, method string) *zerolog.Event {
	e := a.logger.WithLevel(level).Str("method", method)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		e = e.Str("peer", p.Addr.String())
	}
	return e
}

// identityStream is a server stream whose context carries the caller's identity.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

// Context returns the stream's context with the caller's identity.
func (s *identityStream) Context() context.Context { return s.ctx }

// checkingStream is a server stream that authorizes its first received message before letting
// the handler see it.
type checkingStream struct {
	grpc.ServerStream
	ctx   context.Context
	check func(msg any) error

	mu      sync.Mutex
	checked bool
	err     error
}

// Context returns the stream's context with the caller's identity.
func (s *checkingStream) Context() context.Context { return s.ctx }

// RecvMsg receives a message; the first one is authorized before it is returned.
func (s *checkingStream) RecvMsg(m any) error {
	s.mu.Lock()
	checked, err := s.checked, s.err
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if err := s.ServerStream.RecvMsg(m); err != nil || checked {
		return err
	}
	err = s.check(m)
	s.mu.Lock()
	s.checked, s.err = err == nil, err
	s.mu.Unlock()
	return err
}

// SendMsg sends a message, refusing to before the first received message was authorized.
func (s *checkingStream) SendMsg(m any) error {
	s.mu.Lock()
	checked, err := s.checked, s.err
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if !checked {
		return status.Error(codes.PermissionDenied, "Permission denied: a response before the request was authorized")
	}
	return s.ServerStream.SendMsg(m)
}
