package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// RequireRoot fails the test (never skips it) when it cannot run: the project's rule is that a
// root-only test that cannot run says why, loudly.
func RequireRoot(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Fatalf("this test needs Linux network namespaces; running on %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root (network namespaces, veth, iptables); run `make test` as root")
	}
}

// RequireCommands fails the test when one of the named programs is not on PATH.
func RequireCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("this test needs %q on PATH (scripts/install-deps.sh installs it): %v", n, err)
		}
	}
}

// Eventually polls cond every interval until it returns nil or the timeout passes, then
// fails the test with the last error. It replaces sleeping in tests.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := WaitFor(context.Background(), timeout, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// WaitFor polls cond with a short backoff until it returns nil, ctx ends or timeout passes.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	interval := 10 * time.Millisecond
	var last error
	for {
		if last = cond(); last == nil {
			return nil
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("not true after %v: %w", timeout, last)
		case <-t.C:
		}
		if interval < 200*time.Millisecond {
			interval *= 2
		}
	}
}

// RepoRoot returns the repository root (the directory holding go.mod), found by walking up
// from the working directory of the test.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// Binary returns the path of a built binary in bin/ (make build), failing with the reason
// when it is missing. WEAVE_BIN_DIR overrides the directory.
func Binary(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("WEAVE_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(RepoRoot(t), "bin")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("binary %s not built (run `make build` first, `make test` does): %v", p, err)
	}
	return p
}
