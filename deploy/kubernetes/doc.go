// Package kubernetes holds the manifests that run weave on a Kubernetes cluster (weave.yaml:
// RBAC, ConfigMap, DaemonSet; weave-secret.yaml: the password) and the image they use
// (Dockerfile). Its tests decode every manifest strictly into the Kubernetes API types and
// check that the pieces refer to each other.
package kubernetes
