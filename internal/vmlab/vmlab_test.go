package vmlab

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

// The archive must unpack with a real cpio into the tree we meant: files with content and
// mode, parent directories, symlinks.
func TestCPIOUnpacks(t *testing.T) {
	testutil.RequireCommands(t, "busybox")
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.file("/a/b/c.txt", 0o644, []byte("hello"))
	c.file("/a/odd", 0o755, []byte("x"))
	c.symlink("/a/link", "b/c.txt")
	c.mkdirAll("/empty/dir")
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command("busybox", "cpio", "-i", "-d")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a/b/c.txt")); err != nil || string(b) != "hello" {
		t.Errorf("a/b/c.txt: %q %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "a/odd")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("a/odd: %v %v", st, err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "a/link")); err != nil || l != "b/c.txt" {
		t.Errorf("a/link -> %q %v", l, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "empty/dir")); err != nil || !st.IsDir() {
		t.Errorf("empty/dir: %v", err)
	}
}

func TestModuleClosure(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/net/sched/sch_netem.ko:\n" +
		"kernel/net/ipv4/esp4.ko: kernel/net/xfrm/xfrm_algo.ko kernel/crypto/aead-helper.ko\n" +
		"kernel/net/xfrm/xfrm_algo.ko:\n" +
		"kernel/crypto/aead-helper.ko:\n" +
		"kernel/drivers/net/veth.ko:\n" +
		"kernel/drivers/net/vethx.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	idx, err := readModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := idx.closure([]string{"esp4", "sch-netem"}, []string{"drivers/net/veth.ko"})
	if err != nil {
		t.Fatal(err)
	}
	want := "kernel/net/xfrm/xfrm_algo.ko kernel/crypto/aead-helper.ko kernel/net/ipv4/esp4.ko kernel/net/sched/sch_netem.ko kernel/drivers/net/veth.ko"
	if strings.Join(got, " ") != want {
		t.Errorf("closure:\n got %s\nwant %s", strings.Join(got, " "), want)
	}
	if _, err := idx.closure([]string{"no_such_mod"}, nil); err == nil {
		t.Error("an unknown module was accepted")
	}
}

func TestRunPattern(t *testing.T) {
	for in, want := range map[string]string{
		"TestA":              "^TestA$",
		"TestA/sub.case(1)":  `^TestA$/^sub\.case\(1\)$`,
		"TestVMSleeve/loss5": "^TestVMSleeve$/^loss5$",
	} {
		if got := runPattern(in); got != want {
			t.Errorf("runPattern(%q) = %q, want %q", in, got, want)
		}
	}
}

// The init script must hand the test binary its arguments and environment unchanged, even
// with quotes and spaces in them.
func TestInitScriptQuoting(t *testing.T) {
	s := initScript(imageSpec{args: []string{"-test.run", "^It's a $test$"}, env: []string{"K=v w'x"}})
	want := guestTest + ` '-test.run' '^It'\''s a $test$'`
	if !strings.Contains(s, want) {
		t.Errorf("init script does not run %s:\n%s", want, s)
	}
	out, err := exec.Command("sh", "-c", "printf %s "+shellQuote("^It's a $test$")).Output()
	if err != nil || string(out) != "^It's a $test$" {
		t.Errorf("shellQuote does not survive sh: %q %v", out, err)
	}
	if !strings.Contains(s, `export 'K=v w'\''x'`) {
		t.Errorf("env not exported:\n%s", s)
	}
}

func TestExtractELF(t *testing.T) {
	testutil.RequireCommands(t, "xz")
	dir := t.TempDir()
	elfData := append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel"), 100)...)
	cmd := exec.Command("xz", "-c")
	cmd.Stdin = bytes.NewReader(elfData)
	xz, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	// A bzImage: setup code, the xz stream, then trailing data after it.
	bz := append(append(bytes.Repeat([]byte{0x90}, 1000), xz...), []byte("trailer")...)
	in, out := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(in, bz, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := extractELF(context.Background(), in, out); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, elfData) {
		t.Errorf("extracted %d bytes, want the %d-byte ELF", len(got), len(elfData))
	}
	if err := os.WriteFile(in, []byte("no stream here"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := extractELF(context.Background(), in, out); err == nil {
		t.Error("an image without an xz stream was accepted")
	}
}

func TestParseMetaDepends(t *testing.T) {
	for rec, want := range map[string][2]string{
		"Package: linux-image-amd64\nVersion: 6.1.192-3\nDepends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\n": {"linux-image-6.1.0-57-amd64", "6.1.192-3"},
		"Depends: foo, linux-image-6.12.0-1-amd64\n":                                                          {"linux-image-6.12.0-1-amd64", ""},
		"Depends: linux-image-$(reboot) (= 1)\n":                                                              {"", ""},
		"Version: 1\n":                                                                                        {"", ""},
	} {
		pkg, v := parseMetaDepends(rec)
		if pkg != want[0] || v != want[1] {
			t.Errorf("parseMetaDepends(%q) = %q, %q; want %q", rec, pkg, v, want)
		}
	}
}

// The verdict comes from QEMU's exit status and the guest's status line together: QEMU exits
// 1 on its own errors too, which must never read as a pass.
func TestBootVerdictFromFakeQEMU(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, script string
		want         Verdict
		errHas       string
	}{
		{"passed", "echo 'vmlab: test exit status 0 after 3.1s'\r; exit 1", Passed, ""},
		{"failed", "echo 'vmlab: test exit status 1 after 3.1s'; exit 3", Failed, ""},
		{"qemu error", "echo 'qemu-system-x86_64: -kernel: cannot load' >&2; exit 1", NoVerdict, "never reported"},
		{"guest died", "echo 'Kernel panic'; exit 0", NoVerdict, "without a verdict"},
		{"hung", "exec sleep 30", NoVerdict, "did not finish"},
	} {
		fake := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
		if err := os.WriteFile(fake, []byte("#!/bin/sh\n"+tc.script+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		var lines []string
		start := time.Now()
		v, err := boot(context.Background(), bootConfig{qemu: fake, memMB: 64, cpus: 1, timeout: time.Second,
			line: func(l string) { lines = append(lines, l) }})
		if v != tc.want || (tc.errHas == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.errHas)) {
			t.Errorf("%s: verdict %v, err %v; want %v, error containing %q", tc.name, v, err, tc.want, tc.errHas)
		}
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("%s: boot took %v with a 1s timeout", tc.name, d)
		}
		if tc.name == "passed" && (len(lines) != 1 || strings.HasSuffix(lines[0], "\r")) {
			t.Errorf("console lines %q: want one line without the serial CR", lines)
		}
	}
}

// An interrupt while QEMU runs kills QEMU and comes back as an InterruptedError (so the
// caller can clean up and re-deliver it), instead of killing the test process on the spot.
func TestBootInterrupted(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho booting\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := boot(context.Background(), bootConfig{qemu: fake, memMB: 64, cpus: 1, timeout: 20 * time.Second,
		line: func(string) { _ = syscall.Kill(os.Getpid(), syscall.SIGINT) }})
	var ie *InterruptedError
	if !errors.As(err, &ie) || ie.Signal != os.Interrupt {
		t.Fatalf("boot after SIGINT: %v; want an InterruptedError for interrupt", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("boot returned %v after the interrupt: QEMU was not killed promptly", d)
	}
}
