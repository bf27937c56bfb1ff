// Package api holds the wire types of weaver's local control API: JSON over HTTP on a unix
// socket (0600). It imports only the standard library so that clients (weavectl, the CNI
// plugin) link nothing of the daemon. Paths are versioned (/v1/...); fields are only added,
// never renamed, within a version.
package api
