// Command cmd writes weave's image tarball (`make image`): the static binaries of -bin in
// /usr/local/bin over a busybox base layer, as an OCI image layout `ctr images import`
// accepts.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/weavemesh/weave/internal/image"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding static weaver, weavectl, weave-cni (and weave-kube, weave-npc if built)")
	busybox := flag.String("busybox", "/bin/busybox", "static busybox for the base layer (Debian's busybox-static); empty: no shell in the image")
	name := flag.String("name", image.DefaultName, "image reference")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the binaries")
	out := flag.String("o", "bin/weave-image.tar", "output file")
	flag.Parse()
	if err := run(*out, *name, *arch, *bin, *busybox); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(out, name, arch, bin, busybox string) error {
	spec, err := image.Weave(name, arch, bin, busybox)
	if err != nil {
		return err
	}
	// Written next to the output and renamed: an interrupted run never leaves a torn file
	// where `ctr images import` would find it.
	f, err := os.CreateTemp(filepath.Dir(out), ".weave-image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriter(f)
	res, err := image.Write(w, spec)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return err
	}
	fmt.Printf("%s: %s manifest %s image id %s\n", out, name, res.Manifest, res.Config)
	return nil
}
