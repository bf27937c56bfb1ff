// Package plugin implements the CNI plugin (ADD, DEL, CHECK, VERSION, STATUS, GC) on top of
// the router's control API; it never reaches into the daemon's internals.
//
// It never destroys what it did not make: ADD into a namespace whose CNI_IFNAME is taken by
// an interface that is not this container's weave veth is refused (CNI error 4) before
// anything is made, a failing ADD removes only the pair it created, and DEL removes the pair
// by its host end (vethwepl + hash of container and interface), never the container's
// interface by name.
package plugin
