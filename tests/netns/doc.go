// Package netns holds the root-only end-to-end tests: real weaver and weavectl binaries in
// network namespaces built with internal/netlab.
package netns
