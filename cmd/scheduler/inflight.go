package main

import (
	"context"
	"sync"

	"google.golang.org/grpc"
)

// inflightCalls counts the gRPC calls in progress, so that shutdown can tell "nothing left to
// finish" from "connections still open": grpc.Server.GracefulStop also waits for every client
// connection to go away, which an idle client (Bazel between actions) can take a second or more
// to do, although no call needs the process any more.
type inflightCalls struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed while n == 0; replaced when a call starts
}

func newInflightCalls() *inflightCalls {
	c := &inflightCalls{idle: make(chan struct{})}
	close(c.idle)
	return c
}

func (c *inflightCalls) begin() {
	c.mu.Lock()
	if c.n == 0 {
		c.idle = make(chan struct{})
	}
	c.n++
	c.mu.Unlock()
}

func (c *inflightCalls) end() {
	c.mu.Lock()
	c.n--
	if c.n == 0 {
		close(c.idle)
	}
	c.mu.Unlock()
}

// Idle returns a channel that is closed once no call is in progress.
func (c *inflightCalls) Idle() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.idle
}

// ServerOptions returns the interceptors that count calls; put them first.
func (c *inflightCalls) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c.begin()
			defer c.end()
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			c.begin()
			defer c.end()
			return h(srv, ss)
		}),
	}
}
