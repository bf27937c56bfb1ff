package vswitch_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/ovn-org/libovsdb/model"
	"github.com/ovn-org/libovsdb/ovsdb"

	"github.com/weavemesh/weave/fastdp/ovs/internal/modelgen"
	"github.com/weavemesh/weave/fastdp/ovs/vswitch"
)

// TestGeneratedUpToDate regenerates the models in memory from the committed schema and fails
// when a committed file differs: someone edited a generated file or the schema without
// running go generate.
func TestGeneratedUpToDate(t *testing.T) {
	schema, err := os.ReadFile(filepath.Join("..", "schema", "vswitch.ovsschema"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := modelgen.Generate(schema, "vswitch")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(modelgen.Tables)+1 {
		t.Fatalf("generated %d files, want %d", len(files), len(modelgen.Tables)+1)
	}
	for name, want := range files {
		got, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%s: %v (run go generate ./fastdp/ovs/vswitch)", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go generate ./fastdp/ovs/vswitch", name)
		}
	}
}

// TestModelMatchesSchema checks that the models map onto the full committed schema (every
// table and column tagged in the structs exists with a compatible type), as the client checks
// against the server's schema on connect.
func TestModelMatchesSchema(t *testing.T) {
	dbm, err := vswitch.FullDatabaseModel()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("..", "schema", "vswitch.ovsschema"))
	if err != nil {
		t.Fatal(err)
	}
	var full ovsdb.DatabaseSchema
	if err := json.Unmarshal(raw, &full); err != nil {
		t.Fatalf("committed schema does not parse: %v", err)
	}
	for _, s := range []ovsdb.DatabaseSchema{full, vswitch.Schema()} {
		if s.Name != "Open_vSwitch" {
			t.Fatalf("schema name %q", s.Name)
		}
		m, errs := model.NewDatabaseModel(s, dbm)
		if len(errs) > 0 {
			t.Fatalf("model does not match schema %s: %v", s.Version, errs)
		}
		for _, table := range modelgen.Tables {
			if _, ok := m.Types()[table]; !ok {
				t.Errorf("model has no table %s", table)
			}
		}
	}
}
