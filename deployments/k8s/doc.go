// Package k8s holds the test of the Kubernetes manifests beside it (and of the compose file
// at the top of the repository): they are rendered with kustomize and decoded strictly into
// the Kubernetes API types, so a misspelt field fails here rather than in a cluster.
package k8s
