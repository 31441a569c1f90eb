// Package deploy holds the Kubernetes manifests (deploy/kubernetes) and the Dockerfiles of the
// scheduler and worker images they run (deploy/docker). Neither a cluster nor a Docker engine
// runs in CI; this package's tests render the manifests with the kustomize engine kubectl
// embeds, decode every object strictly into k8s.io/api types and check that grace periods,
// selectors, token Secrets and autoscaler targets agree, and that the Dockerfiles pin their
// bases and run the binaries as a non-root user.
package deploy
