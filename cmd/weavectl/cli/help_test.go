package cli

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/weavemesh/weave/internal/testutil"
)

// buildWeavectl compiles the real binary, so the help test sees exactly what a user runs
// (not a possibly stale bin/weavectl).
func buildWeavectl(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "weavectl")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/weavectl")
	cmd.Dir = testutil.RepoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build weavectl: %v\n%s", err, b)
	}
	return out
}

// TestEveryVerbHelpTouchesNothing runs `weavectl VERB --help` (and -h) for every verb of the
// command table, so a new verb is covered without editing the test: each must print its
// usage and exit 0 without starting weaver or creating the state dir, the socket's directory
// or anything in HOME.
func TestEveryVerbHelpTouchesNothing(t *testing.T) {
	bin := buildWeavectl(t)
	root := t.TempDir()
	home := filepath.Join(root, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(root, "state")
	runDir := filepath.Join(root, "run")
	marker := filepath.Join(root, "weaver-started")
	// A stand-in weaver that leaves a trace if anything starts it (launch, reset).
	fakeWeaver := filepath.Join(root, "weaver")
	if err := os.WriteFile(fakeWeaver, []byte("#!/bin/sh\necho \"$@\" >> "+marker+"\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"HOME=" + home, "PATH=" + root, "WEAVER_BIN=" + fakeWeaver,
		"WEAVE_STATE_DIR=" + stateDir, "WEAVE_SOCKET=" + filepath.Join(runDir, "weave.sock"),
	}
	cmds := commands()
	if len(cmds) < 14 {
		t.Fatalf("only %d verbs in the command table", len(cmds))
	}
	for _, c := range cmds {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"--state-dir", stateDir, c.name, "-help"}} {
			name := strings.Join(args, " ")
			if args[0] == "--state-dir" {
				name = "--state-dir DIR " + c.name + " -help"
			}
			t.Run(name, func(t *testing.T) {
				cmd := exec.Command(bin, args...)
				cmd.Env = env
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				var ee *exec.ExitError
				if err != nil && !errors.As(err, &ee) {
					t.Fatalf("run: %v", err)
				}
				if code := cmd.ProcessState.ExitCode(); code != 0 {
					t.Errorf("exit status %d, want 0; stderr: %s", code, stderr.String())
				}
				if want := "usage: weavectl [--socket PATH] [--state-dir DIR] " + c.name + " "; !strings.HasPrefix(stdout.String(), want) {
					t.Errorf("stdout %q does not start with %q", stdout.String(), want)
				}
				if !strings.Contains(stdout.String(), c.help) {
					t.Errorf("stdout %q lacks the verb's description %q", stdout.String(), c.help)
				}
				if b, err := os.ReadFile(marker); err == nil {
					t.Errorf("weaver was started: %q", b)
				}
				for _, p := range []string{stateDir, runDir} {
					if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("%s was created (stat: %v)", p, err)
					}
				}
				if ents, err := os.ReadDir(home); err != nil || len(ents) != 0 {
					t.Errorf("HOME changed: %v %v", ents, err)
				}
				// Whatever went wrong, the next verb starts from a clean slate.
				os.Remove(marker)
				os.RemoveAll(stateDir)
				os.RemoveAll(runDir)
			})
		}
	}
}
