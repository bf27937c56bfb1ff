// Package plugin implements the CNI plugin (ADD, DEL, CHECK, VERSION, STATUS, GC) on top of
// the router's control API; it never reaches into the daemon's internals.
package plugin
