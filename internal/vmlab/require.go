package vmlab

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

// GuestEnv is set to "1" in the guest's environment: the test is running inside the VM.
const GuestEnv = "WEAVE_VMLAB_GUEST"

// DefaultTimeout bounds one VM (boot, test, verdict) unless Timeout says otherwise.
const DefaultTimeout = 4 * time.Minute

type config struct {
	modules []string
	timeout time.Duration
	memMB   int
	cpus    int
}

func defaultConfig() config { return config{timeout: DefaultTimeout, memMB: 1024, cpus: 2} }

// Option tunes Require.
type Option func(*config)

// Modules names kernel modules the test needs; the guest loads them (and their
// dependencies) before the test body runs. A name the kernel lacks fails the test.
func Modules(names ...string) Option {
	return func(c *config) { c.modules = append(c.modules, names...) }
}

// Timeout bounds the whole VM run; QEMU is killed when it passes.
func Timeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// Memory sets the guest's RAM in MiB (default 1024: the initramfs lives in it).
func Memory(mb int) Option { return func(c *config) { c.memMB = mb } }

// InGuest reports whether this process runs inside a VM of the lab.
func InGuest() bool { return os.Getenv(GuestEnv) == "1" }

// Require makes the test run with Debian's kernel. Inside the VM it loads the modules and
// returns true: the test body goes on. On the host it runs this very test in a VM, reports
// the guest's output and verdict as the test's, and returns false: the caller returns.
func Require(t *testing.T, opts ...Option) bool {
	t.Helper()
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if InGuest() {
		loadModules(t, cfg.modules)
		return true
	}
	runInVM(t, cfg)
	return false
}

func loadModules(t *testing.T, names []string) {
	t.Helper()
	for _, m := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, "modprobe", m).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("vmlab guest: modprobe %s: %v\n%s", m, err, out)
		}
	}
}

// hostRequirements are the programs the host needs to run the lab (scripts/install-deps.sh
// installs them).
var hostRequirements = []string{"qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb", "depmod", "xz", "ldd"}

func runInVM(t *testing.T, cfg config) {
	t.Helper()
	if dl, ok := t.Deadline(); ok {
		// Leave go test time to print our failure instead of panicking over us.
		if left := time.Until(dl) - 10*time.Second; left < cfg.timeout {
			cfg.timeout = max(left, time.Second)
		}
	}
	// Registered before anything that needs cleaning, so it runs after all of it: an
	// interrupt caught during the boot is delivered again once the temporary files are gone.
	var interrupted *InterruptedError
	t.Cleanup(func() {
		if interrupted != nil {
			if s, ok := interrupted.Signal.(syscall.Signal); ok {
				_ = syscall.Kill(os.Getpid(), s)
			}
		}
	})
	// The guest's own go test timeout fires first, so a hung test prints its goroutines
	// before QEMU is killed.
	inner := max(cfg.timeout-20*time.Second, cfg.timeout/2)
	g := prepareGuest(t, cfg, []string{"-test.run", runPattern(t.Name()), "-test.v", "-test.count=1",
		"-test.timeout", inner.String()}, nil)
	start := time.Now()
	verdict, err := g.boot(t, cfg)
	errors.As(err, &interrupted)
	t.Logf("vmlab: kernel %s (%s) ready in %v, initramfs %.1f MiB in %v, VM ran %v: %s",
		g.kernel.Release, g.kernel.Version, g.kernelTime.Round(time.Millisecond), float64(g.size)/(1<<20),
		g.imageTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), verdict)
	switch {
	case err != nil:
		t.Fatalf("vmlab: %v", err)
	case verdict != Passed:
		t.Fatalf("vmlab: the test failed inside the VM (guest output above)")
	}
}

// guest is a kernel and an initramfs ready to boot.
type guest struct {
	kernel                *Kernel
	initrd                string
	size                  int64
	kernelTime, imageTime time.Duration
}

// prepareGuest checks the host, fetches (or finds) the kernel and builds an initramfs that
// runs this test binary with args; extraEnv adds KEY=VALUE pairs to the guest test's env.
func prepareGuest(t *testing.T, cfg config, args, extraEnv []string) *guest {
	t.Helper()
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Fatalf("this test needs the VM lab (QEMU with Debian's amd64 kernel); running on %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, hostRequirements...)
	testutil.RequireCommands(t, guestTools...)
	if err := checkStatic(busyboxPath); err != nil {
		t.Fatalf("the VM lab needs busybox-static (scripts/install-deps.sh installs it): %v", err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("component", "vmlab")
	ctx := context.Background()
	g := &guest{}
	start := time.Now()
	k, err := FetchKernel(ctx, CacheDir(), log)
	if err != nil {
		t.Fatalf("vmlab: %v", err)
	}
	g.kernel, g.kernelTime = k, time.Since(start)

	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("vmlab: the test binary: %v", err)
	}
	binDir := os.Getenv("WEAVE_BIN_DIR")
	if binDir == "" {
		binDir = filepath.Join(testutil.RepoRoot(t), "bin")
	}
	if _, err := os.Stat(binDir); err != nil {
		binDir = "" // a guest test that needs bin/ fails there with testutil.Binary's reason
	}
	dir := t.TempDir()
	spec := imageSpec{
		kernel:  k,
		modules: cfg.modules,
		testBin: exe,
		args:    args,
		env:     append([]string{GuestEnv + "=1", "WEAVE_BIN_DIR=" + guestBinDir}, extraEnv...),
		binDir:  binDir,
	}
	start = time.Now()
	g.initrd = filepath.Join(dir, "initramfs.gz")
	if g.size, err = buildInitramfs(ctx, spec, filepath.Join(dir, "scratch"), g.initrd); err != nil {
		t.Fatalf("vmlab: %v", err)
	}
	g.imageTime = time.Since(start)
	return g
}

// boot runs the guest, its console going to the test log.
func (g *guest) boot(t *testing.T, cfg config) (Verdict, error) {
	return boot(context.Background(), bootConfig{
		kernel: g.kernel.ELF, initrd: g.initrd, memMB: cfg.memMB, cpus: cfg.cpus, timeout: cfg.timeout,
		line: func(l string) { t.Log("guest| " + l) },
	})
}

// runPattern selects exactly this test (and this subtest path) with -test.run.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", p)
		}
	}
	return nil
}

// testWriter sends the lab's slog lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
