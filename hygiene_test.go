package weave

import (
	"bytes"
	"encoding/json"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/weavemesh/weave"

type listedPackage struct {
	ImportPath string
	Dir        string
	Name       string
	Deps       []string
	GoFiles    []string
	Standard   bool
}

func listPackages(t *testing.T) []listedPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p listedPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decode go list: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func ours(dep string) (string, bool) {
	if dep == module {
		return ".", true
	}
	rel, ok := strings.CutPrefix(dep, module+"/")
	return rel, ok
}

func under(rel string, roots ...string) bool {
	for _, r := range roots {
		if rel == r || strings.HasPrefix(rel, r+"/") {
			return true
		}
	}
	return false
}

// TestImportRules enforces ARCHITECTURE.md's layering on the transitive dependencies.
func TestImportRules(t *testing.T) {
	type rule struct {
		pkgs      []string // the rule applies to these package trees
		forbidden []string // project trees they must not reach
		external  []string // non-project import prefixes they must not reach
		stdOnly   bool     // only the standard library
		allowOnly []string // if set: the only project trees allowed
	}
	dataPlane := []string{"l2switch", "overlay", "sleeve", "fastdp", "tap", "udp"}
	rules := []rule{
		{pkgs: []string{"api"}, stdOnly: true},
		{pkgs: []string{"mesh"}, forbidden: []string{"l2switch", "overlay", "sleeve", "fastdp", "ipam", "daemon", "api", "plugin", "tap", "udp"}},
		{pkgs: []string{"l2switch"}, forbidden: []string{"sleeve", "fastdp", "ipam", "daemon", "internal/netdev"}},
		{pkgs: []string{"sleeve", "fastdp"}, forbidden: []string{"l2switch", "daemon"}},
		{pkgs: []string{"overlay"}, forbidden: []string{"l2switch", "sleeve", "fastdp", "daemon"}},
		{pkgs: []string{"ipam"}, allowOnly: []string{"ipam", "mesh", "internal"}},
		{pkgs: []string{"tap", "udp"}, allowOnly: []string{"tap", "udp", "internal"}},
		{pkgs: []string{"plugin", "cmd/weave-cni"}, forbidden: append([]string{"daemon", "mesh", "ipam"}, dataPlane...)},
		{pkgs: []string{"cmd/weavectl"}, forbidden: append([]string{"daemon", "mesh", "ipam", "internal/netdev", "plugin"}, dataPlane...),
			external: []string{"github.com/vishvananda/", "github.com/songgao/", "github.com/hashicorp/"}},
	}
	for _, p := range listPackages(t) {
		rel, _ := ours(p.ImportPath)
		for _, d := range p.Deps {
			drel, mine := ours(d)
			if mine && drel == "daemon" && !under(rel, "cmd/weaver", "tests", "daemon") {
				t.Errorf("%s imports daemon: only cmd/weaver and tests may", rel)
			}
			for _, r := range rules {
				if !under(rel, r.pkgs...) {
					continue
				}
				switch {
				case r.stdOnly && !mine && strings.Contains(strings.Split(d, "/")[0], "."):
					t.Errorf("%s must use only the standard library, reaches %s", rel, d)
				case r.stdOnly && mine && !under(drel, r.pkgs...):
					t.Errorf("%s must use only the standard library, reaches %s", rel, drel)
				case mine && under(drel, r.forbidden...) && !under(drel, r.pkgs...):
					t.Errorf("%s must not import %s", rel, drel)
				case mine && len(r.allowOnly) > 0 && !under(drel, r.allowOnly...):
					t.Errorf("%s may import only %v of the project, reaches %s", rel, r.allowOnly, drel)
				}
				for _, e := range r.external {
					if strings.HasPrefix(d, e) {
						t.Errorf("%s must not link %s", rel, d)
					}
				}
			}
		}
	}
}

// TestPackageDocs requires exactly one package doc comment per package.
func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		docs := 0
		for _, f := range p.GoFiles {
			af, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatalf("parse %s: %v", f, err)
			}
			if af.Doc != nil {
				docs++
			}
		}
		if docs != 1 {
			t.Errorf("%s has %d package doc comments, want exactly 1", p.ImportPath, docs)
		}
	}
}

func TestGofmt(t *testing.T) {
	files, err := exec.Command("git", "ls-files", "*.go").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err) // a tarball build has nothing to compare against
	}
	args := append([]string{"-l"}, strings.Fields(string(files))...)
	out, err := exec.Command("gofmt", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("gofmt: %v\n%s", err, out)
	}
	if len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("files need gofmt:\n%s", out)
	}
}

// TestModTidy fails when go.mod or go.sum would change under `go mod tidy`.
func TestModTidy(t *testing.T) {
	out, err := exec.Command("go", "mod", "tidy", "-diff").CombinedOutput()
	if err != nil {
		t.Errorf("go.mod/go.sum are not tidy (run `go mod tidy`):\n%s", out)
	}
	if _, err := os.Stat("go.sum"); err != nil {
		t.Errorf("go.sum missing: %v", err)
	}
}
