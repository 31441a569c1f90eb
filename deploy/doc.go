// Package deploy holds the Kubernetes manifests (deploy/kubernetes) and the worker image's
// Dockerfile (deploy/docker). Neither a cluster nor a Docker engine runs in CI; this package's
// tests decode every manifest strictly into k8s.io/api types and check that grace periods,
// selectors and autoscaler targets agree, and that the Dockerfile pins its bases and runs the
// worker as a non-root user.
package deploy
