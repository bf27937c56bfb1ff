// Package weave is the root of a layer-2 mesh overlay network for containers and hosts, the
// successor of Weave Net. The root package holds no code, only the repository's own checks:
// import rules, package docs, formatting and module tidiness (see ARCHITECTURE.md in shared/).
package weave
