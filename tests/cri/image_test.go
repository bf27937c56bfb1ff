package cri

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/image"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// TestMakeImage: the tarball `make image` writes imports into containerd under the name
// deploy/kubernetes/weave.yaml runs, and in a container of it weavectl runs, weaver starts
// far enough to print its usage, and the init container's `weave-cni install` installs the
// plugin and the conflist.
func TestMakeImage(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", "make", "go")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The Makefile target itself, into a private bin directory.
	bin := t.TempDir()
	mk := exec.CommandContext(ctx, "make", "-C", testutil.RepoRoot(t), "--no-print-directory", "image", "BIN="+bin)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	tarball := filepath.Join(bin, "weave-image.tar")

	lab := netlab.New(t, netlab.Options{Hosts: 1})
	dir := t.TempDir()
	e := &env{t: t, host: lab.Hosts[0], dir: dir, sock: filepath.Join(dir, "containerd.sock")}
	e.startContainerd(ctx, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf"))
	ctr := func(args ...string) string {
		t.Helper()
		out, err := e.run(ctx, append([]string{"ctr", "-a", e.sock, "-n", "weave-image-test"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ctr("images", "import", tarball)
	if names := strings.Fields(ctr("images", "ls", "-q")); len(names) != 1 || names[0] != image.DefaultName {
		t.Fatalf("imported images %v, want [%s]", names, image.DefaultName)
	}

	want, err := exec.CommandContext(ctx, filepath.Join(bin, "image", "weavectl"), "version").Output()
	if err != nil {
		t.Fatalf("weavectl version on the host: %v", err)
	}
	wantLine := strings.SplitN(string(want), "\n", 2)[0] // "weavectl <version>"
	for i, tc := range []struct {
		argv []string
		want []string
	}{
		{[]string{"/usr/local/bin/weavectl", "version"}, []string{wantLine, "weaver   not running"}},
		{[]string{"/usr/local/bin/weaver", "--help"}, []string{"usage: weaver", "-ipalloc-range"}},
		{[]string{"/bin/sh", "-c", "/usr/local/bin/weave-cni install --bin-dir=/tmp/bin --conf-dir=/tmp/conf && ls /tmp/bin && cat /tmp/conf/10-weave.conflist"},
			[]string{"weave-cni\n", `"type": "weave-cni"`}},
	} {
		out := ctr(append([]string{"run", "--rm", image.DefaultName, "weave-image-test-" + string(rune('a'+i))}, tc.argv...)...)
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v in the image: output lacks %q:\n%s", tc.argv, w, out)
			}
		}
	}
}
