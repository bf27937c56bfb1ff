// Package cri tests weave-cni on the kubelet's path: containerd's CRI plugin (Debian's
// containerd and runc), started by the test as a child in a lab host's network namespace
// with its own root, state and socket, driven with crictl, with pause and busybox images
// built offline as OCI tarballs and imported with ctr.
package cri
