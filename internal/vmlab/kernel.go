package vmlab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/weavemesh/weave/internal/logx"
)

const (
	// metaPackage is Debian's "current kernel" package; it depends on the versioned one.
	metaPackage = "linux-image-amd64"
	// DefaultCacheDir holds the extracted kernels when WEAVE_VMLAB_CACHE is not set.
	DefaultCacheDir = "/var/cache/weave-vmlab"
	fetchLimit      = 10 * time.Minute
)

// Kernel is one extracted Debian kernel package in the cache.
type Kernel struct {
	// Package and Version name the Debian package it came from.
	Package, Version string
	// Release is the module directory name (uname -r), e.g. "6.1.0-57-amd64".
	Release string
	// Dir is the package's extracted tree; modules are under Dir/lib/modules/Release.
	Dir string
	// ELF is the uncompressed kernel image, booted through its PVH entry.
	ELF string
}

// ModuleDir is where the kernel's modules and its depmod index live.
func (k *Kernel) ModuleDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

// CacheDir is where kernels are cached: $WEAVE_VMLAB_CACHE, else DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv("WEAVE_VMLAB_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+:~_-]*$`)

// resolvePackage asks apt which versioned kernel package linux-image-amd64 depends on (the
// ABI number in its name changes), and which version of it to download. One apt-cache call
// when the meta package pins the version, as Debian's does; a second one otherwise.
func resolvePackage(ctx context.Context) (pkg, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", metaPackage).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s (run apt-get update): %w", metaPackage, err)
	}
	pkg, version = parseMetaDepends(string(out))
	if pkg == "" {
		return "", "", fmt.Errorf("apt-cache show %s names no kernel package:\n%s", metaPackage, out)
	}
	if version == "" {
		out, err = exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).Output()
		if err != nil {
			return "", "", fmt.Errorf("apt-cache show %s: %w", pkg, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(line, "Version: "); ok {
				version = strings.TrimSpace(v)
				break
			}
		}
	}
	if !safeName.MatchString(version) {
		return "", "", fmt.Errorf("apt-cache gives no usable version for %s: %q", pkg, version)
	}
	return pkg, version, nil
}

// parseMetaDepends finds the linux-image-* dependency of the meta package's record, and the
// version it pins with "(= V)" if any.
func parseMetaDepends(record string) (pkg, version string) {
	for _, line := range strings.Split(record, "\n") {
		deps, ok := strings.CutPrefix(line, "Depends: ")
		if !ok {
			continue
		}
		for _, d := range strings.Split(deps, ",") {
			name, rest, _ := strings.Cut(strings.TrimSpace(d), " ")
			if !strings.HasPrefix(name, "linux-image-") || !safeName.MatchString(name) {
				continue
			}
			if v, ok := strings.CutPrefix(strings.TrimSpace(rest), "(= "); ok {
				version = strings.TrimSuffix(v, ")")
			}
			return name, version
		}
	}
	return "", ""
}

// FetchKernel returns the kernel that linux-image-amd64 currently points to, from the cache
// under root, downloading and extracting it first when it is not there. Concurrent callers
// (parallel test processes, other worktrees) serialise on a lock file; a half-extracted tree is
// never seen because it is renamed into place only when complete.
func FetchKernel(ctx context.Context, root string, log *slog.Logger) (*Kernel, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchLimit)
	defer cancel()
	pkg, version, err := resolvePackage(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, pkg+"_"+strings.ReplaceAll(version, ":", "%3a"))
	if k, err := loadKernel(pkg, version, dir); err == nil {
		return k, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("vmlab cache: %w", err)
	}
	unlock, err := lockFile(filepath.Join(root, "lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Someone else may have finished while we waited for the lock.
	if k, err := loadKernel(pkg, version, dir); err == nil {
		return k, nil
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(root, ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("vmlab cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	log.Info("fetching kernel package", logx.KeyVersion, pkg+"="+version, logx.KeyPath, root)
	if err := run(ctx, tmp, "apt-get", "download", "-q", pkg+"="+version); err != nil {
		return nil, err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	tree := filepath.Join(tmp, "tree")
	if err := run(ctx, tmp, "dpkg-deb", "-x", debs[0], tree); err != nil {
		return nil, err
	}
	release, err := onlyRelease(tree)
	if err != nil {
		return nil, err
	}
	// The package ships no modules.dep: build the index the guest's modprobe needs.
	if err := run(ctx, tmp, "depmod", "-b", tree, release); err != nil {
		return nil, err
	}
	if err := extractELF(ctx, filepath.Join(tree, "boot", "vmlinuz-"+release), filepath.Join(tree, "vmlinux")); err != nil {
		return nil, err
	}
	if err := os.Rename(tree, dir); err != nil {
		return nil, fmt.Errorf("vmlab cache: %w", err)
	}
	log.Info("kernel cached", logx.KeyVersion, pkg+"="+version+" ("+release+")", logx.KeyDuration, time.Since(start).Round(time.Millisecond))
	return loadKernel(pkg, version, dir)
}

func loadKernel(pkg, version, dir string) (*Kernel, error) {
	release, err := onlyRelease(dir)
	if err != nil {
		return nil, err
	}
	k := &Kernel{Package: pkg, Version: version, Release: release, Dir: dir, ELF: filepath.Join(dir, "vmlinux")}
	for _, p := range []string{k.ELF, filepath.Join(k.ModuleDir(), "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("vmlab cache incomplete: %w", err)
		}
	}
	return k, nil
}

func onlyRelease(tree string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(tree, "lib", "modules"))
	if err != nil {
		return "", fmt.Errorf("kernel tree %s: %w", tree, err)
	}
	if len(ents) != 1 {
		return "", fmt.Errorf("kernel tree %s has %d module directories, want 1", tree, len(ents))
	}
	return ents[0].Name(), nil
}

// xzMagic starts the xz stream holding the kernel ELF inside a bzImage.
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// extractELF cuts the xz-compressed vmlinux out of a bzImage. QEMU boots that ELF through its
// PVH note, which skips the real-mode setup and the decompressor (slow under TCG).
func extractELF(ctx context.Context, bzImage, out string) error {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("read kernel image: %w", err)
	}
	i := bytes.Index(data, xzMagic)
	if i < 0 {
		return fmt.Errorf("%s: no xz stream in the bzImage", bzImage)
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("extract kernel ELF: %w", err)
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(data[i:])
	cmd.Stdout = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xz -dc of %s: %w: %s", bzImage, err, stderr.String())
	}
	var hdr [4]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil || string(hdr[:]) != "\x7fELF" {
		return fmt.Errorf("%s: the xz stream is not an ELF kernel", bzImage)
	}
	return f.Close()
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out))
	}
	return nil
}

func tail(b []byte) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// lockFile takes an exclusive flock on p; the returned func releases it.
func lockFile(p string) (func(), error) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vmlab cache lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("vmlab cache lock: %w", err)
	}
	return func() { f.Close() }, nil
}
