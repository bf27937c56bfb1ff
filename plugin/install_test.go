package plugin

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/weavemesh/weave/api"
)

func TestInstall(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "src-weave-cni")
	if err := os.WriteFile(bin, []byte("#!plugin v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	binDir, confDir := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	wrote, err := Install(InstallOptions{Binary: bin, BinDir: binDir, ConfDir: confDir})
	if err != nil || !wrote {
		t.Fatalf("first install: wrote=%v err=%v", wrote, err)
	}
	st, err := os.Stat(filepath.Join(binDir, "weave-cni"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("plugin not installed 0755: %v %v", st, err)
	}
	conf := filepath.Join(confDir, ConflistName)
	if b, _ := os.ReadFile(conf); string(b) != DefaultConflist {
		t.Fatalf("conflist %q", b)
	}
	// An upgrade replaces the plugin and leaves the (maybe edited) conflist alone.
	os.WriteFile(bin, []byte("#!plugin v2"), 0o600)
	os.WriteFile(conf, []byte(`{"edited":true}`), 0o644)
	if wrote, err := Install(InstallOptions{Binary: bin, BinDir: binDir, ConfDir: confDir}); err != nil || wrote {
		t.Fatalf("second install: wrote=%v err=%v", wrote, err)
	}
	if b, _ := os.ReadFile(filepath.Join(binDir, "weave-cni")); string(b) != "#!plugin v2" {
		t.Fatalf("plugin not upgraded: %q", b)
	}
	if b, _ := os.ReadFile(conf); string(b) != `{"edited":true}` {
		t.Fatal("an existing conflist was overwritten")
	}
	// Another network's configuration: ours is not added next to it.
	other := filepath.Join(dir, "other")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "05-calico.conf"), []byte("{}"), 0o644)
	if wrote, err := Install(InstallOptions{Binary: bin, BinDir: binDir, ConfDir: other}); err != nil || wrote {
		t.Fatalf("install next to another config: wrote=%v err=%v", wrote, err)
	}
	if ents, _ := os.ReadDir(binDir); len(ents) != 1 {
		t.Fatalf("temp files left in the bin dir: %v", ents)
	}
}

func TestDefaultConflist(t *testing.T) {
	deployed, err := os.ReadFile(filepath.Join("..", "deploy", "cni", ConflistName))
	if err != nil {
		t.Fatal(err)
	}
	if string(deployed) != DefaultConflist {
		t.Fatalf("deploy/cni/%s and plugin.DefaultConflist differ: keep them identical", ConflistName)
	}
	list, err := libcni.ConfListFromBytes(deployed)
	if err != nil {
		t.Fatal(err)
	}
	if list.Name != "weave" || len(list.Plugins) != 2 || list.Plugins[0].Network.Type != "weave-cni" || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("conflist plugins: %+v", list.Plugins)
	}
	// The runtime hands our plugin its entry with the list's version and name injected.
	var entry map[string]any
	json.Unmarshal(list.Plugins[0].Bytes, &entry)
	entry["cniVersion"], entry["name"] = list.CNIVersion, list.Name
	b, _ := json.Marshal(entry)
	c, err := ParseNetConf(b)
	if err != nil || !c.Hairpin() || c.Bridge != "weave" {
		t.Fatalf("our entry: %+v %v", c, err)
	}
}

func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "w.sock")
	var out, errOut bytes.Buffer
	if code, ok := command([]string{"status", "--socket", sock}, &out, &errOut); !ok || code != 1 || !strings.Contains(errOut.String(), "not running") {
		t.Fatalf("no router: code %d, stderr %q", code, errOut.String())
	}
	var ready atomic.Bool
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != api.PathStatus {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(api.Status{Ready: ready.Load(), Waiting: "awaiting IPAM consensus"})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	errOut.Reset()
	if code, _ := command([]string{"status", "--socket", sock}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "consensus") {
		t.Fatalf("not ready: code %d, stderr %q", code, errOut.String())
	}
	ready.Store(true)
	if code, _ := command([]string{"status", "--socket", sock}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "ready") {
		t.Fatalf("ready: code %d, stdout %q", code, out.String())
	}
	if _, ok := command([]string{"frobnicate"}, &out, &errOut); ok {
		t.Fatal("unknown subcommand accepted")
	}
}
