// Package vmlab runs tests inside a QEMU virtual machine booted with Debian's own kernel, for
// the kernel features the test machine's kernel lacks (IPsec ESP, GCM, netem, WireGuard, the
// openvswitch module).
//
// A test declares that it needs the VM kernel:
//
//	func TestSleeveUnderLoss(t *testing.T) {
//		if !vmlab.Require(t, vmlab.Modules("sch_netem")) {
//			return // ran inside the VM; the verdict is already this test's result
//		}
//		// inside the VM: root, the modules are loaded; netlab works as usual
//	}
//
// On the host, Require boots a VM that runs the same test binary with
// `-test.run '^TestName$'`, streams the guest's serial console into the test log line by line,
// fails the test with the guest's verdict and returns false. Inside the VM (marked by
// GuestEnv in the environment the guest's init sets) it loads the modules and returns true.
// No test is ever skipped: what is missing on the host (QEMU, apt, busybox-static) fails the
// test with the reason.
//
// The kernel package is resolved at run time (what `linux-image-amd64` depends on: the ABI
// number changes), downloaded with `apt-get download`, unpacked with `dpkg-deb -x`, indexed with
// `depmod -b`, and its ELF image is cut out of the bzImage so QEMU boots it through the PVH
// entry (no real-mode decompressor: ~4 s to a shell under TCG instead of ~10 s). All of that
// is cached by package version under CacheDir, so a second run downloads and extracts
// nothing. QEMU always runs with `-accel tcg`: the KVM of this machine kind hangs on a stock
// kernel. The guest reports its verdict through isa-debug-exit.
//
// Everything the guest needs travels in the initramfs, built per VM in Go (newc cpio, gzip):
// busybox-static, the modules asked for and a base set for netlab and the daemon (with their
// dependencies and a fresh depmod index, so the kernel can autoload them), ip/tc/iptables with
// their shared libraries and xtables plugins, the project's binaries from bin/, and the test
// binary itself with its libraries.
package vmlab
