// Package auth authenticates and authorizes the scheduler's callers and configures its TLS.
//
// Clients (Pants, Bazel) present a bearer token (`authorization: Bearer TOKEN` gRPC metadata)
// listed in the client token file, whose grants name the instance names the token may use and
// what it may do there (read, write the action cache, execute). Workers present a token listed in
// the worker token file; a worker token opens bot sessions and reads and writes the CAS of every
// instance, but never touches an action cache nor calls Execute, and a client token never opens a
// bot session. The Authorizer holds both files, reloads them on SIGHUP keeping the last good
// configuration when a reload fails, compares tokens in constant time and never logs them; its
// gRPC interceptors enforce the method matrix documented on Authorizer.
//
// Transport security is separate: ServerTLSConfig serves TLS 1.2+ with a key pair (and an
// optional client CA, for mutual TLS) reloaded when the files change, ClientTransportCredentials
// is the worker's side of grpcs://, and TokenCredentials sends the worker's token on every call.
package auth
