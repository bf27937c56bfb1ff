package image

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Binaries are the programs the image must hold: the DaemonSet runs weaver, its init
// container and readiness probe weave-cni; weavectl is for `kubectl exec`.
var Binaries = []string{"weaver", "weavectl", "weave-cni"}

// OptionalBinaries go in when the build made them (the Kubernetes entrypoint and the
// NetworkPolicy controller).
var OptionalBinaries = []string{"weave-kube", "weave-npc"}

// BusyboxApplets are linked to busybox in /bin, for debugging with `kubectl exec`. Nothing
// the manifests run needs a shell: every command is one of our static binaries.
var BusyboxApplets = []string{"cat", "cp", "env", "ip", "ls", "mkdir", "mv", "ps", "rm", "sh", "sleep"}

// Env is the image's environment.
var Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Weave returns the spec of weave's image from the binaries in binDir and, if busybox is
// not empty, that static busybox as the base layer.
func Weave(name, arch, binDir, busybox string) (Spec, error) {
	// The mount points of the DaemonSet and what a program expects to find.
	base := []Entry{
		{Path: "etc", Dir: true, Mode: 0o755},
		{Path: "tmp", Dir: true, Mode: 0o1777},
		{Path: "run/weave", Dir: true, Mode: 0o755},
		{Path: "var/lib/weave", Dir: true, Mode: 0o755},
		{Path: "proc", Dir: true, Mode: 0o555},
		{Path: "sys", Dir: true, Mode: 0o555},
		{Path: "dev", Dir: true, Mode: 0o755},
		// A bare nsswitch-free /etc: Go's resolver reads these when present.
		{Path: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/:/bin/sh\n")},
		{Path: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\n")},
	}
	if busybox != "" {
		b, err := os.ReadFile(busybox)
		if err != nil {
			return Spec{}, fmt.Errorf("busybox: %w", err)
		}
		if err := static(b); err != nil {
			return Spec{}, fmt.Errorf("busybox %s: %w (install busybox-static)", busybox, err)
		}
		base = append(base, Entry{Path: "bin/busybox", Mode: 0o755, Data: b})
		for _, a := range BusyboxApplets {
			base = append(base, Entry{Path: "bin/" + a, Link: "busybox", Mode: 0o777})
		}
	}
	var bins []Entry
	for _, n := range slices.Concat(Binaries, OptionalBinaries) {
		b, err := os.ReadFile(filepath.Join(binDir, n))
		if errors.Is(err, fs.ErrNotExist) && slices.Contains(OptionalBinaries, n) {
			continue
		}
		if err != nil {
			return Spec{}, fmt.Errorf("binary %s (make build): %w", n, err)
		}
		// The image has no libc: a dynamically linked program would not start.
		if err := static(b); err != nil {
			return Spec{}, fmt.Errorf("binary %s: %w", n, err)
		}
		bins = append(bins, Entry{Path: BinDir + "/" + n, Mode: 0o755, Data: b})
	}
	// Base first: it changes rarely, so nodes keep it when only the binaries change.
	return Spec{
		Name:       name,
		Arch:       arch,
		Entrypoint: []string{"/" + BinDir + "/weaver"},
		Env:        Env,
		Layers:     [][]Entry{base, bins},
	}, nil
}

// static refuses an ELF file with a program interpreter (dynamically linked).
func static(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked")
		}
	}
	return nil
}
