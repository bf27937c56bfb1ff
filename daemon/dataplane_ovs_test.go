package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDatapathValidation(t *testing.T) {
	for _, tc := range []struct {
		datapath, socket, typ string
		ok                    bool
	}{
		{"", "", "", true},
		{"linux", "", "", true},
		{"ovs", DefaultOVSSocket, "", true},
		{"ovs", "/run/openvswitch/db.sock", "netdev", true},
		{"ovs", "unix:/x", "system", true},
		{"ovs", "tcp:10.0.0.1:6640", "", false},
		{"ovs", "unix:relative/db.sock", "", false},
		{"ovs", "", "", false},
		{"odp", "", "", false},
		{"linux", "", "dpdk", false},
	} {
		c := DefaultConfig()
		c.Logger = slog.New(slog.DiscardHandler)
		c.Datapath, c.OVSSocket, c.OVSDatapathType = tc.datapath, tc.socket, tc.typ
		if err := c.validate(); (err == nil) != tc.ok {
			t.Errorf("datapath %q socket %q type %q: %v, want ok=%v", tc.datapath, tc.socket, tc.typ, err, tc.ok)
		}
	}
}

// TestCleanupOVS: without a record or --datapath=ovs reset leaves OVS alone; with a record
// whose ovsdb-server does not answer it fails with the reason and keeps the record, so a
// later reset tries again.
func TestCleanupOVS(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.StateDir = dir
	if err := cleanupOVS(cfg); err != nil {
		t.Fatalf("no record, linux datapath: %v", err)
	}
	record := filepath.Join(dir, ovsStateFile)
	if err := os.WriteFile(record, []byte(filepath.Join(dir, "none.sock")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := cleanupOVS(cfg)
	if err == nil || !strings.Contains(err.Error(), "ovs cleanup") {
		t.Fatalf("unreachable ovsdb-server: %v", err)
	}
	if d := time.Since(start); d > 2*ovsCleanupTimeout {
		t.Errorf("cleanup took %v", d)
	}
	if _, err := os.Stat(record); err != nil {
		t.Errorf("record gone after a failed cleanup: %v", err)
	}
}
