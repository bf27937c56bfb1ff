// Package fastdp is the kernel data path: a Linux VXLAN device (through netlink) or an Open
// vSwitch bridge (through libovsdb) programmed from the mesh, so frames never touch userspace.
package fastdp
