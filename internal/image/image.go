// Package image writes weave's container image as an OCI image layout tarball, without
// docker: the file `ctr images import` (containerd, hence the kubelet's CRI) and `docker load`
// accept. The output is deterministic (fixed times and owners, sorted entries, gzip without
// a timestamp), so the same binaries always give the same digests and an unchanged image is
// not re-imported.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"
)

// DefaultName is the image deploy/kubernetes/weave.yaml runs (with imagePullPolicy
// IfNotPresent, so an imported image is used as is).
const DefaultName = "ghcr.io/weavemesh/weave:latest"

// BinDir is where the DaemonSet's commands find the binaries.
const BinDir = "usr/local/bin"

// epoch is every entry's modification time: a build time would change the digest.
var epoch = time.Unix(0, 0).UTC()

// Entry is one file of a layer. Directories leading to it are added (0755) when not listed.
type Entry struct {
	Path string // relative to /, no leading slash
	Mode int64  // permission bits
	Data []byte // regular file contents
	Link string // non-empty: a symlink to Link
	Dir  bool   // a directory
}

// Spec describes the image.
type Spec struct {
	Name       string // reference, e.g. DefaultName
	Arch       string // GOARCH of the binaries
	Entrypoint []string
	Env        []string
	Layers     [][]Entry // bottom first
}

// Result names what Write produced.
type Result struct {
	Manifest string // digest of the manifest ("sha256:...")
	Config   string // digest of the config, the image ID containerd shows
}

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Write writes the image layout tarball of s to w.
func Write(w io.Writer, s Spec) (Result, error) {
	if s.Name == "" || s.Arch == "" {
		return Result{}, fmt.Errorf("image: name and arch are required")
	}
	tag := "latest"
	if i := strings.LastIndexByte(s.Name, ':'); i > strings.LastIndexByte(s.Name, '/') {
		tag = s.Name[i+1:]
	}
	blobs := map[string][]byte{}
	add := func(b []byte) (string, int) {
		d := digest(b)
		blobs[d] = b
		return d, len(b)
	}

	var layers []descriptor
	var diffIDs []string
	for i, entries := range s.Layers {
		raw, err := layerTar(entries)
		if err != nil {
			return Result{}, fmt.Errorf("image: layer %d: %w", i, err)
		}
		diffIDs = append(diffIDs, digest(raw))
		gz, err := gzipped(raw)
		if err != nil {
			return Result{}, fmt.Errorf("image: layer %d: %w", i, err)
		}
		d, n := add(gz)
		layers = append(layers, descriptor{MediaType: mediaLayer, Digest: d, Size: n})
	}

	cfg, err := json.Marshal(map[string]any{
		"architecture": s.Arch,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": s.Entrypoint,
			"Env":        s.Env,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return Result{}, fmt.Errorf("image: config: %w", err)
	}
	cfgDigest, cfgSize := add(cfg)
	man, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        descriptor{MediaType: mediaConfig, Digest: cfgDigest, Size: cfgSize},
		"layers":        layers,
	})
	if err != nil {
		return Result{}, fmt.Errorf("image: manifest: %w", err)
	}
	manDigest, manSize := add(man)
	// containerd (and docker since 25) name the imported image from
	// io.containerd.image.name; ref.name is the OCI layout's own tag.
	idx, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: mediaManifest, Digest: manDigest, Size: manSize,
			Annotations: map[string]string{"io.containerd.image.name": s.Name, "org.opencontainers.image.ref.name": tag},
			Platform:    &platform{Architecture: s.Arch, OS: "linux"},
		}},
	})
	if err != nil {
		return Result{}, fmt.Errorf("image: index: %w", err)
	}

	out := []Entry{
		{Path: "oci-layout", Mode: 0o644, Data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{Path: "index.json", Mode: 0o644, Data: idx},
	}
	for d, b := range blobs {
		out = append(out, Entry{Path: "blobs/sha256/" + strings.TrimPrefix(d, "sha256:"), Mode: 0o644, Data: b})
	}
	tw := tar.NewWriter(w)
	if err := writeEntries(tw, out); err != nil {
		return Result{}, fmt.Errorf("image: write: %w", err)
	}
	if err := tw.Close(); err != nil {
		return Result{}, fmt.Errorf("image: write: %w", err)
	}
	return Result{Manifest: manDigest, Config: cfgDigest}, nil
}

func layerTar(entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := writeEntries(tw, entries); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gzipped compresses b with no name and a zero timestamp in the gzip header.
func gzipped(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeEntries writes entries sorted by path, each parent directory before its children,
// with fixed times and root ownership.
func writeEntries(tw *tar.Writer, entries []Entry) error {
	byPath := map[string]Entry{}
	for _, e := range entries {
		p := path.Clean(strings.TrimPrefix(e.Path, "/"))
		if p == "." || strings.HasPrefix(p, "../") || p == ".." {
			return fmt.Errorf("bad path %q", e.Path)
		}
		if _, dup := byPath[p]; dup {
			return fmt.Errorf("duplicate path %q", p)
		}
		e.Path = p
		byPath[p] = e
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = Entry{Path: d, Dir: true, Mode: 0o755}
			}
		}
	}
	// A listed directory replaces the implied one.
	for _, e := range entries {
		if e.Dir {
			p := path.Clean(strings.TrimPrefix(e.Path, "/"))
			byPath[p] = Entry{Path: p, Dir: true, Mode: e.Mode}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	slices.Sort(paths) // "a" < "a/b": parents first
	for _, p := range paths {
		e := byPath[p]
		h := &tar.Header{Name: p, Mode: e.Mode, ModTime: epoch}
		switch {
		case e.Dir:
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		case e.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.Link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.Data); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	return nil
}
