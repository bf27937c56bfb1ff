// Command ovsmodelgen writes the vswitch models: ovsmodelgen -p vswitch -o DIR SCHEMA.
// It is run by `go generate ./fastdp/ovs/...` and never downloads anything.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/weavemesh/weave/fastdp/ovs/internal/modelgen"
)

func main() {
	out := flag.String("o", ".", "output directory")
	pkg := flag.String("p", "vswitch", "package name")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: ovsmodelgen [-o DIR] [-p PKG] SCHEMA")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *out, *pkg); err != nil {
		fmt.Fprintln(os.Stderr, "ovsmodelgen:", err)
		os.Exit(1)
	}
}

func run(schemaPath, out, pkg string) error {
	schema, err := os.ReadFile(schemaPath)
	if err != nil {
		return err
	}
	files, err := modelgen.Generate(schema, pkg)
	if err != nil {
		return err
	}
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(out, name), src, 0o644); err != nil {
			return err
		}
	}
	return nil
}
