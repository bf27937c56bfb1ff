package vmlab

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestRequireBootsDebianKernel: Require runs the test body inside the VM, with the modules
// asked for loaded, on Debian's kernel rather than the host's.
func TestRequireBootsDebianKernel(t *testing.T) {
	if !Require(t, Modules("sch_netem", "esp4")) {
		return
	}
	if !InGuest() {
		t.Fatal("Require let the body run outside the VM")
	}
	b, err := os.ReadFile("/proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"sch_netem", "esp4"} {
		if !strings.Contains(string(b), m+" ") {
			t.Errorf("module %s not loaded:\n%s", m, b)
		}
	}
	v, _ := os.ReadFile("/proc/version")
	if !strings.Contains(string(v), "Debian") {
		t.Errorf("not Debian's kernel: %s", v)
	}
}

// TestHelperGuestFails is not a test of its own: TestGuestVerdicts runs it in a VM, where
// it fails on purpose. Anywhere else it has nothing to do.
func TestHelperGuestFails(t *testing.T) {
	if os.Getenv("VMLAB_HELPER") != "fail" {
		return
	}
	t.Fatal("failing inside the VM on purpose")
}

// TestGuestVerdicts: a test failing in the guest is a failed verdict, and a guest that does
// not finish in time is killed with a clear error, without waiting longer.
func TestGuestVerdicts(t *testing.T) {
	cfg := defaultConfig()
	cfg.timeout = 2 * time.Minute
	g := prepareGuest(t, cfg, []string{"-test.run", "^TestHelperGuestFails$", "-test.v"}, []string{"VMLAB_HELPER=fail"})
	v, err := g.boot(t, cfg)
	if err != nil || v != Failed {
		t.Errorf("a failing guest test gave verdict %v, err %v; want failed", v, err)
	}

	cfg.timeout = 2 * time.Second // far less than a boot takes under TCG
	start := time.Now()
	v, err = g.boot(t, cfg)
	if err == nil || v != NoVerdict || !strings.Contains(err.Error(), "did not finish") {
		t.Errorf("a guest out of time gave verdict %v, err %v; want a timeout error", v, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("boot returned %v after a 2s timeout: QEMU was not killed promptly", d)
	}
}
