package cluster

import (
	"context"
	"errors"
	"io"
	"strings"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

// forwardedHeader marks a call one replica forwards to another. A replica that receives one
// while it does not lead answers UNAVAILABLE at once (the sender retries on the leader it learns
// of next) instead of forwarding it again.
const forwardedHeader = "x-buildfleet-forwarded"

// localServices are the services of the scheduler this replica runs as leader.
type localServices struct {
	sched *scheduler.Scheduler
	exec  repb.ExecutionServer
	ops   longrunningpb.OperationsServer
	bots  rwpb.BotsServer
}

func newLocalServices(s *scheduler.Scheduler) *localServices {
	exec, ops, bots := s.Services()
	return &localServices{sched: s, exec: exec, ops: ops, bots: bots}
}

// target is where one attempt of a call goes: the local scheduler, or the leader at addr.
type target struct {
	local *localServices
	addr  string
	conn  *grpc.ClientConn
}

// Register registers the replica's Execution, longrunning Operations, Bots and gRPC health
// (grpc.health.v1.Health, see healthServer) services on srv.
func (n *Node) Register(srv *grpc.Server) {
	repb.RegisterExecutionServer(srv, &executionForwarder{n: n})
	longrunningpb.RegisterOperationsServer(srv, &operationsForwarder{n: n})
	rwpb.RegisterBotsServer(srv, &botsForwarder{n: n})
	healthpb.RegisterHealthServer(srv, &healthServer{n: n})
}

// Messages of the UNAVAILABLE answers that mean the leader went away (rather than, say, the
// bucket being unreachable from a live leader, which is passed on to the client).
var leaderGoneMessages = []string{
	notLeaderMessage, shuttingDownMessage, leaderChangedMessage,
	// Transport failures of the connection to the leader.
	"connection", "transport", "EOF", "closing",
}

const (
	notLeaderMessage = "This scheduler replica is not the leader"
	// shuttingDownMessage is what a closed scheduler (a leader that lost its term) answers.
	shuttingDownMessage = "Scheduler is shutting down"
	// leaderChangedMessage ends an attempt forwarded to a replica that stopped leading.
	leaderChangedMessage = "The scheduler leader changed while the call was forwarded to it"
)

// retryable reports whether a failed attempt may be repeated on the (next) leader: the leader
// was unreachable, stepped down, or was not the leader any more.
func retryable(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	for _, m := range leaderGoneMessages {
		if strings.Contains(st.Message(), m) {
			return true
		}
	}
	return false
}

// call runs attempt against the leader until it succeeds or fails with a status other than
// UNAVAILABLE. While no leader answers, the call is held up to HoldTimeout from its start or
// from its last progress (progress reports it). A call forwarded by another replica is served
// only by the local scheduler.
func (n *Node) call(ctx context.Context, attempt func(context.Context, *target) error, progress func() bool) error {
	if forwarded(ctx) {
		n.mu.Lock()
		local := n.local
		n.mu.Unlock()
		if local == nil {
			return status.Error(codes.Unavailable, notLeaderMessage)
		}
		return attempt(ctx, &target{local: local})
	}
	deadline := n.clk.Now().Add(n.cfg.HoldTimeout)
	var (
		last  error
		avoid string
	)
	for {
		t, err := n.await(ctx, deadline, avoid)
		if err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			if last != nil {
				return last
			}
			return status.Errorf(codes.Unavailable, "No scheduler leader was elected within %s", n.cfg.HoldTimeout)
		}
		if t.local != nil {
			err = attempt(ctx, t)
		} else {
			// The attempt ends as soon as the leader changes: the old leader may be frozen
			// (its connection up, nothing answering), and only the next one can serve it.
			actx, a := n.trackAttempt(outgoing(ctx), t.addr)
			err = attempt(actx, t)
			if n.untrackAttempt(a) && err != nil && ctx.Err() == nil {
				err = status.Error(codes.Unavailable, leaderChangedMessage)
			}
		}
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		last = err
		if progress != nil && progress() {
			deadline = n.clk.Now().Add(n.cfg.HoldTimeout)
		}
		if t.local == nil {
			if e := n.warnLimited("forward-failed"); e != nil {
				e.Str("leader", t.addr).Str("reason", status.Convert(err).Message()).Msg("Forwarding a call to the scheduler leader failed; holding it and retrying")
			}
		} else {
			n.log.Debug().Err(err).Msg("Local scheduler stepped down; retrying on the next leader")
		}
		avoid = t.addr
		// Give the election a moment before calling the same leader again.
		n.pause(ctx, n.cfg.RetryInterval)
		if n.clk.Now().After(deadline) {
			return last
		}
	}
}

// forwarded reports whether the call was forwarded by another replica.
func forwarded(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(forwardedHeader)) > 0
}

// outgoing returns ctx with the incoming call's metadata (authorization, request metadata...)
// as outgoing metadata, marked as forwarded. Transport headers are left to gRPC.
func outgoing(ctx context.Context) context.Context {
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range in {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || k == "content-type" || k == "user-agent" || k == "te" {
			continue
		}
		out[k] = append([]string(nil), v...)
	}
	out.Set(forwardedHeader, "1")
	return metadata.NewOutgoingContext(ctx, out)
}

// executionForwarder is the Execution service of a replica.
type executionForwarder struct {
	repb.UnimplementedExecutionServer
	n *Node
}

// Execute runs the action on the leader and streams its operation. If the leader goes away
// after the operation's name was sent, the stream continues as a WaitExecution of that name on
// the next leader.
func (e *executionForwarder) Execute(req *repb.ExecuteRequest, stream repb.Execution_ExecuteServer) error {
	return e.n.operationStream(stream, "", func(ctx context.Context, t *target, send func(*longrunningpb.Operation) error) error {
		if t.local != nil {
			return t.local.exec.Execute(req, &operationSink{ServerStream: stream, ctx: ctx, send: send})
		}
		cs, err := repb.NewExecutionClient(t.conn).Execute(ctx, req)
		if err != nil {
			return err
		}
		return pipe(cs, send)
	})
}

// WaitExecution streams the operation named in req from the leader, resuming on the next one.
func (e *executionForwarder) WaitExecution(req *repb.WaitExecutionRequest, stream repb.Execution_WaitExecutionServer) error {
	return e.n.operationStream(stream, req.Name, nil)
}

// operationStream serves an operation stream. first makes the first attempt (nil: a
// WaitExecution of name); once an operation name is known, later attempts wait on it.
func (n *Node) operationStream(stream grpc.ServerStream, name string, first func(context.Context, *target, func(*longrunningpb.Operation) error) error) error {
	ctx := stream.Context()
	sent := 0
	seen := 0
	send := func(op *longrunningpb.Operation) error {
		if op.Name != "" {
			name = op.Name
		}
		sent++
		return stream.SendMsg(op)
	}
	progress := func() bool {
		p := sent > seen
		seen = sent
		return p
	}
	return n.call(ctx, func(actx context.Context, t *target) error {
		if name == "" && first != nil {
			return first(actx, t, send)
		}
		wreq := &repb.WaitExecutionRequest{Name: name}
		if t.local != nil {
			return t.local.exec.WaitExecution(wreq, &operationSink{ServerStream: stream, ctx: actx, send: send})
		}
		cs, err := repb.NewExecutionClient(t.conn).WaitExecution(actx, wreq)
		if err != nil {
			return err
		}
		return pipe(cs, send)
	}, progress)
}

// pipe copies a client stream of operations to send until it ends.
func pipe(cs grpc.ServerStreamingClient[longrunningpb.Operation], send func(*longrunningpb.Operation) error) error {
	for {
		op, err := cs.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := send(op); err != nil {
			return err
		}
	}
}

// operationSink is the server stream handed to the local scheduler: messages go through send.
type operationSink struct {
	grpc.ServerStream
	ctx  context.Context
	send func(*longrunningpb.Operation) error
}

// Send sends op to the client.
func (s *operationSink) Send(op *longrunningpb.Operation) error { return s.send(op) }

// Context returns the call's context.
func (s *operationSink) Context() context.Context { return s.ctx }

// unary forwards a unary call: local runs it on the local scheduler, remote on a leader's
// connection.
func unary[Resp any](n *Node, ctx context.Context, local func(context.Context, *localServices) (Resp, error), remote func(context.Context, *grpc.ClientConn) (Resp, error)) (Resp, error) {
	var resp Resp
	err := n.call(ctx, func(actx context.Context, t *target) error {
		var err error
		if t.local != nil {
			resp, err = local(actx, t.local)
		} else {
			resp, err = remote(actx, t.conn)
		}
		return err
	}, nil)
	return resp, err
}

// operationsForwarder is the longrunning Operations service of a replica.
type operationsForwarder struct {
	longrunningpb.UnimplementedOperationsServer
	n *Node
}

// GetOperation forwards to the leader.
func (o *operationsForwarder) GetOperation(ctx context.Context, req *longrunningpb.GetOperationRequest) (*longrunningpb.Operation, error) {
	return unary(o.n, ctx,
		func(ctx context.Context, l *localServices) (*longrunningpb.Operation, error) {
			return l.ops.GetOperation(ctx, req)
		},
		func(ctx context.Context, c *grpc.ClientConn) (*longrunningpb.Operation, error) {
			return longrunningpb.NewOperationsClient(c).GetOperation(ctx, req)
		})
}

// WaitOperation forwards to the leader.
func (o *operationsForwarder) WaitOperation(ctx context.Context, req *longrunningpb.WaitOperationRequest) (*longrunningpb.Operation, error) {
	return unary(o.n, ctx,
		func(ctx context.Context, l *localServices) (*longrunningpb.Operation, error) {
			return l.ops.WaitOperation(ctx, req)
		},
		func(ctx context.Context, c *grpc.ClientConn) (*longrunningpb.Operation, error) {
			return longrunningpb.NewOperationsClient(c).WaitOperation(ctx, req)
		})
}

// ListOperations forwards to the leader.
func (o *operationsForwarder) ListOperations(ctx context.Context, req *longrunningpb.ListOperationsRequest) (*longrunningpb.ListOperationsResponse, error) {
	return unary(o.n, ctx,
		func(ctx context.Context, l *localServices) (*longrunningpb.ListOperationsResponse, error) {
			return l.ops.ListOperations(ctx, req)
		},
		func(ctx context.Context, c *grpc.ClientConn) (*longrunningpb.ListOperationsResponse, error) {
			return longrunningpb.NewOperationsClient(c).ListOperations(ctx, req)
		})
}

// CancelOperation forwards to the leader.
func (o *operationsForwarder) CancelOperation(ctx context.Context, req *longrunningpb.CancelOperationRequest) (*emptypb.Empty, error) {
	return unary(o.n, ctx,
		func(ctx context.Context, l *localServices) (*emptypb.Empty, error) {
			return l.ops.CancelOperation(ctx, req)
		},
		func(ctx context.Context, c *grpc.ClientConn) (*emptypb.Empty, error) {
			return longrunningpb.NewOperationsClient(c).CancelOperation(ctx, req)
		})
}

// DeleteOperation forwards to the leader.
func (o *operationsForwarder) DeleteOperation(ctx context.Context, req *longrunningpb.DeleteOperationRequest) (*emptypb.Empty, error) {
	return unary(o.n, ctx,
		func(ctx context.Context, l *localServices) (*emptypb.Empty, error) {
			return l.ops.DeleteOperation(ctx, req)
		},
		func(ctx context.Context, c *grpc.ClientConn) (*emptypb.Empty, error) {
			return longrunningpb.NewOperationsClient(c).DeleteOperation(ctx, req)
		})
}

// botsForwarder is the Remote Workers API Bots service of a replica.
type botsForwarder struct {
	rwpb.UnimplementedBotsServer
	n *Node
}

// CreateBotSession forwards to the leader.
func (b *botsForwarder) CreateBotSession(ctx context.Context, req *rwpb.CreateBotSessionRequest) (*rwpb.BotSession, error) {
	return unary(b.n, ctx,
		func(ctx context.Context, l *localServices) (*rwpb.BotSession, error) {
			return l.bots.CreateBotSession(ctx, req)
		},
		func(ctx context.Context, c *grpc.ClientConn) (*rwpb.BotSession, error) {
			return rwpb.NewBotsClient(c).CreateBotSession(ctx, req)
		})
}

// UpdateBotSession forwards the long-poll to the leader; if the leader goes away while holding
// it, the same report goes to the next leader (which adopts the bot's leases).
func (b *botsForwarder) UpdateBotSession(ctx context.Context, req *rwpb.UpdateBotSessionRequest) (*rwpb.BotSession, error) {
	return unary(b.n, ctx,
		func(ctx context.Context, l *localServices) (*rwpb.BotSession, error) {
			return l.bots.UpdateBotSession(ctx, req)
		},
		func(ctx context.Context, c *grpc.ClientConn) (*rwpb.BotSession, error) {
			return rwpb.NewBotsClient(c).UpdateBotSession(ctx, req)
		})
}
