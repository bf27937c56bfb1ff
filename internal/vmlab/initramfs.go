package vmlab

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

const (
	busyboxPath = "/bin/busybox"
	guestBinDir = "/weave/bin"
	guestTest   = "/vmlab/test"
)

// guestTools are the Debian programs netlab, the tests and the daemon's tests exec; the guest
// gets them (and their shared libraries) under /usr/sbin. Everything else is busybox.
var guestTools = []string{"ip", "tc", "iptables", "ping", "iperf3"}

// guestTrees are host files and directories copied as they are, when present: iptables'
// dlopen()ed match plugins (invisible to ldd), tc's delay distributions, name databases.
var guestTrees = []string{
	"/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/tc", "/etc/iproute2",
	"/etc/protocols", "/etc/services", "/etc/ethertypes",
}

// imageSpec is what one VM's initramfs holds.
type imageSpec struct {
	kernel  *Kernel
	modules []string // asked for by the test, loaded by Require in the guest
	testBin string   // the test binary, run as guestTest
	args    []string // its arguments
	env     []string // KEY=VALUE for the guest test
	binDir  string   // the project's binaries (bin/), copied to guestBinDir if present
}

// buildInitramfs writes the gzip'd newc archive for spec to out and returns its size.
func buildInitramfs(ctx context.Context, spec imageSpec, scratch, out string) (int64, error) {
	f, err := os.Create(out)
	if err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	// Speed over size: the archive lives for one boot, and the guest unpacks either quickly.
	zw, _ := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	c := newCPIOWriter(zw)
	b := &imageBuilder{c: c, libs: map[string]bool{}}

	b.copyFile(busyboxPath, busyboxPath, 0o755)
	c.symlink("/sbin/modprobe", busyboxPath) // the kernel's request_module() runs it
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/etc", "/usr/bin", "/root"} {
		c.mkdirAll(d)
	}
	for _, tool := range guestTools {
		p, err := exec.LookPath(tool)
		if err != nil {
			return 0, fmt.Errorf("initramfs needs %s on the host: %w", tool, err)
		}
		b.copyExecutable(ctx, p, "/usr/sbin/"+tool)
	}
	for _, p := range guestTrees {
		b.copyTree(p)
	}
	if err := b.addModules(ctx, spec.kernel, spec.modules, scratch); err != nil {
		return 0, err
	}
	if spec.binDir != "" {
		ents, _ := os.ReadDir(spec.binDir)
		for _, e := range ents {
			if e.Type().IsRegular() {
				b.copyExecutable(ctx, filepath.Join(spec.binDir, e.Name()), path.Join(guestBinDir, e.Name()))
			}
		}
	}
	b.copyExecutable(ctx, spec.testBin, guestTest)
	// Each VM is a distinct machine: the daemon derives its identity from machine-id.
	var id [16]byte
	_, _ = rand.Read(id[:])
	c.file("/etc/machine-id", 0o444, []byte(hex.EncodeToString(id[:])+"\n"))
	c.file("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	c.file("/etc/group", 0o644, []byte("root:x:0:\n"))
	c.file("/init", 0o755, []byte(initScript(spec)))

	if b.err != nil {
		return 0, b.err
	}
	if err := c.close(); err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	return st.Size(), f.Close()
}

type imageBuilder struct {
	c    *cpioWriter
	libs map[string]bool
	err  error
}

func (b *imageBuilder) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// copyFile puts the content of src (symlinks followed) at dst.
func (b *imageBuilder) copyFile(src, dst string, perm uint32) {
	data, err := os.ReadFile(src)
	if err != nil {
		b.fail(fmt.Errorf("initramfs: %w", err))
		return
	}
	b.c.file(dst, perm, data)
}

// copyExecutable copies a program and, if it is dynamically linked, the libraries ldd names.
func (b *imageBuilder) copyExecutable(ctx context.Context, src, dst string) {
	b.copyFile(src, dst, 0o755)
	libs, err := sharedLibs(ctx, src)
	if err != nil {
		b.fail(err)
		return
	}
	for _, l := range libs {
		if !b.libs[l] {
			b.libs[l] = true
			b.copyFile(l, l, 0o755)
		}
	}
}

// copyTree copies a file or a directory tree from the host to the same path, if it exists.
func (b *imageBuilder) copyTree(root string) {
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil // absent on this host: the guest goes without it
		}
		switch {
		case d.IsDir():
			b.c.mkdirAll(p)
		case d.Type()&os.ModeSymlink != 0:
			if t, err := os.Readlink(p); err == nil {
				b.c.symlink(p, t)
			}
		case d.Type().IsRegular():
			b.copyFile(p, p, 0o644)
		}
		return nil
	})
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// sharedLibs lists the libraries (and the loader) a dynamic executable needs; none for a
// static one.
func sharedLibs(ctx context.Context, p string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", p).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", p, err, out)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("ldd %s: %s", p, strings.TrimSpace(line))
		}
		if m := lddLine.FindStringSubmatch(line); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs, nil
}

// addModules copies the asked-for modules, the base set and their dependencies, and a depmod
// index of exactly that subset (so modprobe and the kernel's autoload find only what is there).
func (b *imageBuilder) addModules(ctx context.Context, k *Kernel, names []string, scratch string) error {
	idx, err := readModuleIndex(k.ModuleDir())
	if err != nil {
		return err
	}
	mods, err := idx.closure(append(append([]string{}, eagerModules...), names...), baseModuleDirs)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	sort.Strings(mods)
	// depmod wants the files where the index will point: mirror the subset with symlinks.
	sub := filepath.Join(scratch, "lib", "modules", k.Release)
	for _, m := range mods {
		dst := filepath.Join(sub, m)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("module subset: %w", err)
		}
		if err := os.Symlink(filepath.Join(k.ModuleDir(), m), dst); err != nil {
			return fmt.Errorf("module subset: %w", err)
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if data, err := os.ReadFile(filepath.Join(k.ModuleDir(), f)); err == nil {
			if err := os.WriteFile(filepath.Join(sub, f), data, 0o644); err != nil {
				return fmt.Errorf("module subset: %w", err)
			}
		}
	}
	if err := run(ctx, scratch, "depmod", "-b", scratch, k.Release); err != nil {
		return err
	}
	guestDir := "/lib/modules/" + k.Release
	for _, m := range mods {
		b.copyFile(filepath.Join(k.ModuleDir(), m), path.Join(guestDir, m), 0o644)
	}
	ents, err := os.ReadDir(sub)
	if err != nil {
		return fmt.Errorf("module subset: %w", err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), "modules.") {
			b.copyFile(filepath.Join(sub, e.Name()), path.Join(guestDir, e.Name()), 0o644)
		}
	}
	return nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// initScript is the guest's PID 1: mount the pseudo file systems, load the eager modules, run
// the test binary, and hand its verdict to QEMU through isa-debug-exit (port 0xf4: QEMU exits
// with 2*value+1, so 1 means passed and 3 failed). If anything before that dies, the kernel
// panics, reboots, and -no-reboot ends QEMU with status 0: "no verdict".
func initScript(spec imageSpec) string {
	var s strings.Builder
	s.WriteString(`#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t tmpfs tmp /tmp
/bin/busybox mount -t tmpfs run /run
/bin/busybox --install -s /bin
mkdir -p /var /dev/net /dev/pts
ln -s /run /var/run
mount -t devpts devpts /dev/pts
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
ip link set lo up
`)
	for _, m := range eagerModules {
		fmt.Fprintf(&s, "modprobe %s || echo 'vmlab: cannot load %s'\n", m, m)
	}
	for _, kv := range spec.env {
		fmt.Fprintf(&s, "export %s\n", shellQuote(kv))
	}
	s.WriteString("echo \"vmlab: guest up after $(cut -d' ' -f1 /proc/uptime)s\"\ncd /tmp\n")
	s.WriteString(guestTest)
	for _, a := range spec.args {
		s.WriteString(" " + shellQuote(a))
	}
	s.WriteString(` 2>&1
rc=$?
echo "vmlab: test exit status $rc after $(cut -d' ' -f1 /proc/uptime)s"
if [ "$rc" -eq 0 ]; then v='\000'; else v='\001'; fi
printf "$v" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
`)
	return s.String()
}
