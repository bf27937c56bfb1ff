package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeELF is the smallest ELF64 file debug/elf accepts: static, or with a PT_INTERP
// program header (dynamically linked). payload makes each binary distinct.
func fakeELF(interp bool, payload string) []byte {
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	le := binary.LittleEndian
	var phnum uint16
	if interp {
		phnum = 1
	}
	binary.Write(&b, le, struct {
		Type, Machine              uint16
		Version                    uint32
		Entry, Phoff, Shoff        uint64
		Flags                      uint32
		Ehsize, Phentsize, Phnum   uint16
		Shentsize, Shnum, Shstrndx uint16
	}{Type: 2, Machine: 62, Version: 1, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: phnum, Shentsize: 64})
	if interp {
		binary.Write(&b, le, struct {
			Type, Flags                          uint32
			Off, Vaddr, Paddr, Filesz, Memsz, Al uint64
		}{Type: 3, Off: 120, Filesz: 1, Memsz: 1, Al: 1})
	}
	b.WriteString(payload)
	return b.Bytes()
}

// binDir writes fake static binaries; extra names are added to the required ones.
func binDir(t *testing.T, tag string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range slices.Concat(Binaries, extra, []string{"busybox"}) {
		if err := os.WriteFile(filepath.Join(dir, n), fakeELF(false, n+tag), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func build(t *testing.T, dir string) ([]byte, Result) {
	t.Helper()
	spec, err := Weave(DefaultName, "amd64", dir, filepath.Join(dir, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := Write(&out, spec)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), res
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

// untar reads every entry, failing on entries out of order or with a time, owner or
// name that would make the output depend on the machine.
func untar(t *testing.T, r io.Reader) []entry {
	t.Helper()
	var es []entry
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %v owner %d:%d %q:%q, want epoch root", h.Name, h.ModTime, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if n := len(es); n > 0 && strings.TrimSuffix(es[n-1].hdr.Name, "/") >= strings.TrimSuffix(h.Name, "/") {
			t.Errorf("entries not sorted: %s before %s", es[n-1].hdr.Name, h.Name)
		}
		es = append(es, entry{h, data})
	}
	return es
}

type layout struct {
	index struct {
		Manifests []descriptor `json:"manifests"`
	}
	manifest struct {
		MediaType string       `json:"mediaType"`
		Config    descriptor   `json:"config"`
		Layers    []descriptor `json:"layers"`
	}
	config struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Entrypoint []string
			Env        []string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	layers [][]entry
}

func parse(t *testing.T, b []byte) layout {
	t.Helper()
	files := map[string][]byte{}
	for _, e := range untar(t, bytes.NewReader(b)) {
		files[e.hdr.Name] = e.data
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("oci-layout %q", files["oci-layout"])
	}
	blob := func(d descriptor) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok || len(b) != d.Size {
			t.Fatalf("blob %s: present %v size %d, descriptor says %d", d.Digest, ok, len(b), d.Size)
		}
		sum := sha256.Sum256(b)
		if "sha256:"+hex.EncodeToString(sum[:]) != d.Digest {
			t.Fatalf("blob %s: content has another digest", d.Digest)
		}
		return b
	}
	var l layout
	if err := json.Unmarshal(files["index.json"], &l.index); err != nil || len(l.index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	if err := json.Unmarshal(blob(l.index.Manifests[0]), &l.manifest); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(blob(l.manifest.Config), &l.config); err != nil {
		t.Fatal(err)
	}
	if len(l.config.RootFS.DiffIDs) != len(l.manifest.Layers) {
		t.Fatalf("%d diff_ids for %d layers", len(l.config.RootFS.DiffIDs), len(l.manifest.Layers))
	}
	for i, d := range l.manifest.Layers {
		if d.MediaType != mediaLayer {
			t.Errorf("layer %d media type %s", i, d.MediaType)
		}
		zr, err := gzip.NewReader(bytes.NewReader(blob(d)))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != l.config.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: diff_id is not the digest of the uncompressed tar", i)
		}
		l.layers = append(l.layers, untar(t, bytes.NewReader(raw)))
	}
	return l
}

func TestWeaveLayout(t *testing.T) {
	dir := binDir(t, "", "weave-kube") // weave-npc not built: left out
	b, _ := build(t, dir)
	l := parse(t, b)

	m := l.index.Manifests[0]
	if m.Annotations["io.containerd.image.name"] != DefaultName || m.Annotations["org.opencontainers.image.ref.name"] != "latest" {
		t.Errorf("index annotations %v", m.Annotations)
	}
	if m.Platform == nil || m.Platform.Architecture != "amd64" || m.Platform.OS != "linux" || l.config.Architecture != "amd64" || l.config.OS != "linux" {
		t.Errorf("platform %+v config %s/%s", m.Platform, l.config.OS, l.config.Architecture)
	}
	if !slices.Equal(l.config.Config.Entrypoint, []string{"/usr/local/bin/weaver"}) || !slices.Equal(l.config.Config.Env, Env) {
		t.Errorf("config %+v", l.config.Config)
	}
	if len(l.layers) != 2 {
		t.Fatalf("%d layers", len(l.layers))
	}
	var names []string
	for _, e := range l.layers[1] {
		names = append(names, e.hdr.Name)
		if e.hdr.Mode != 0o755 {
			t.Errorf("%s mode %o", e.hdr.Name, e.hdr.Mode)
		}
		if e.hdr.Typeflag == tar.TypeReg {
			want, _ := os.ReadFile(filepath.Join(dir, filepath.Base(e.hdr.Name)))
			if !bytes.Equal(e.data, want) {
				t.Errorf("%s: contents differ from the binary", e.hdr.Name)
			}
		}
	}
	want := []string{"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/weave-cni", "usr/local/bin/weave-kube", "usr/local/bin/weavectl", "usr/local/bin/weaver"}
	if !slices.Equal(names, want) {
		t.Errorf("binary layer:\n got %v\nwant %v", names, want)
	}
	base := map[string]*tar.Header{}
	for _, e := range l.layers[0] {
		base[e.hdr.Name] = e.hdr
	}
	for name, check := range map[string]func(h *tar.Header) bool{
		"bin/busybox":    func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg && h.Mode == 0o755 },
		"bin/sh":         func(h *tar.Header) bool { return h.Typeflag == tar.TypeSymlink && h.Linkname == "busybox" },
		"tmp/":           func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Mode == 0o1777 },
		"var/lib/weave/": func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir },
		"run/weave/":     func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir },
		"etc/passwd":     func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg && h.Mode == 0o644 },
	} {
		if h, ok := base[name]; !ok || !check(h) {
			t.Errorf("base layer %s: %+v", name, h)
		}
	}
}

// The same binaries give the same bytes; a changed binary changes the image but not the
// base layer, which nodes then keep.
func TestDeterministic(t *testing.T) {
	dir := binDir(t, "")
	b1, r1 := build(t, dir)
	b2, r2 := build(t, binDir(t, ""))
	if !bytes.Equal(b1, b2) || r1 != r2 {
		t.Fatalf("same binaries, different output: %v %v", r1, r2)
	}
	os.WriteFile(filepath.Join(dir, "weaver"), fakeELF(false, "weaver v2"), 0o755)
	b3, r3 := build(t, dir)
	if r3.Manifest == r1.Manifest || r3.Config == r1.Config {
		t.Fatalf("changed weaver, same image %v", r3)
	}
	l1, l3 := parse(t, b1), parse(t, b3)
	if l1.manifest.Layers[0].Digest != l3.manifest.Layers[0].Digest || l1.manifest.Layers[1].Digest == l3.manifest.Layers[1].Digest {
		t.Errorf("layers %v -> %v: want only the binary layer changed", l1.manifest.Layers, l3.manifest.Layers)
	}
}

func TestRefuses(t *testing.T) {
	dir := binDir(t, "")
	os.WriteFile(filepath.Join(dir, "weave-cni"), fakeELF(true, "dynamic"), 0o755)
	if _, err := Weave(DefaultName, "amd64", dir, ""); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("dynamic weave-cni: %v", err)
	}
	dir = binDir(t, "")
	os.Remove(filepath.Join(dir, "weavectl"))
	if _, err := Weave(DefaultName, "amd64", dir, ""); err == nil || !strings.Contains(err.Error(), "weavectl") {
		t.Errorf("missing weavectl: %v", err)
	}
	dir = binDir(t, "")
	os.WriteFile(filepath.Join(dir, "busybox"), []byte("#!/bin/sh\n"), 0o755)
	if _, err := Weave(DefaultName, "amd64", dir, filepath.Join(dir, "busybox")); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("busybox not ELF: %v", err)
	}
	for _, layer := range [][]Entry{
		{{Path: "../etc/passwd", Mode: 0o644}},
		{{Path: "a", Mode: 0o644}, {Path: "/a", Mode: 0o644}},
	} {
		if _, err := Write(io.Discard, Spec{Name: DefaultName, Arch: "amd64", Layers: [][]Entry{layer}}); err == nil {
			t.Errorf("layer %+v accepted", layer)
		}
	}
}
