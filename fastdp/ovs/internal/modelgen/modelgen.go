// Package modelgen turns the committed Open_vSwitch schema into the Go models of package
// vswitch, keeping only the tables the OVS backend uses, so the generated code stays small
// and a test can regenerate it in memory to prove the committed files are not stale.
package modelgen

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/ovn-org/libovsdb/modelgen"
	"github.com/ovn-org/libovsdb/ovsdb"
)

// Tables are the tables of Open_vSwitch that the backend reads or writes.
var Tables = []string{"Bridge", "Interface", "Open_vSwitch", "Port"}

// Generate returns the generated files (base name -> gofmt'ed source) of package pkg for the
// tables listed in Tables of the schema given as JSON.
func Generate(schemaJSON []byte, pkg string) (map[string][]byte, error) {
	var full ovsdb.DatabaseSchema
	if err := json.Unmarshal(schemaJSON, &full); err != nil {
		return nil, fmt.Errorf("parse schema: %w", err)
	}
	sub := full
	sub.Tables = make(map[string]ovsdb.TableSchema, len(Tables))
	for _, name := range Tables {
		t, ok := full.Tables[name]
		if !ok {
			return nil, fmt.Errorf("schema %s has no table %s", full.Name, name)
		}
		sub.Tables[name] = t
	}
	gen, err := modelgen.NewGenerator()
	if err != nil {
		return nil, fmt.Errorf("new generator: %w", err)
	}
	out := make(map[string][]byte, len(Tables)+1)
	for _, name := range slices.Sorted(slices.Values(Tables)) {
		t := sub.Tables[name]
		src, err := gen.Format(modelgen.NewTableTemplate(), modelgen.GetTableTemplateData(pkg, name, &t))
		if err != nil {
			return nil, fmt.Errorf("generate table %s: %w", name, err)
		}
		out[modelgen.FileName(name)] = src
	}
	src, err := gen.Format(modelgen.NewDBTemplate(), modelgen.GetDBTemplateData(pkg, sub))
	if err != nil {
		return nil, fmt.Errorf("generate model: %w", err)
	}
	out["model.go"] = src
	return out, nil
}
