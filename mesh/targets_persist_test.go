package mesh

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestConnectUnwritableStateDirChangesNothing: connect and forget that cannot persist the
// target list fail and leave the targets as they were, with nothing dialled: the reply and
// what a restart would load agree (issue #12, scenario 7).
func TestConnectUnwritableStateDirChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	mn := NewMemNetwork()
	c := testConfig(mn, 0)
	c.StateDir = dir
	c.Peers = []string{"10.9.9.9"}
	r := startRouters(t, []Config{c})[0]
	if err := r.Connect([]string{"10.9.9.8"}, false); err != nil {
		t.Fatal(err)
	}
	before := r.Targets()
	// Root ignores file modes: a state dir replaced by a plain file fails every write.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Connect([]string{"10.9.9.7"}, false); err == nil {
		t.Fatal("connect succeeded although the targets cannot be persisted")
	}
	if err := r.Connect([]string{"10.9.9.6"}, true); err == nil {
		t.Fatal("connect --replace succeeded although the targets cannot be persisted")
	}
	if err := r.Forget([]string{"10.9.9.9"}); err == nil {
		t.Fatal("forget succeeded although the targets cannot be persisted")
	}
	if got := r.Targets(); !slices.Equal(got, before) {
		t.Fatalf("targets after failed connect/forget: %v, want %v", got, before)
	}
	for _, cs := range r.Status().Connections {
		if cs.Address == "10.9.9.7:6783" || cs.Address == "10.9.9.6:6783" {
			t.Errorf("a refused target is being dialled: %+v", cs)
		}
	}
}
