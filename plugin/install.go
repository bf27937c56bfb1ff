package plugin

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
)

// DefaultConflist is the example network configuration `make install` and `weave-cni
// install` write when the node has none (deploy/cni/10-weave.conflist is the same). Version
// 1.0.0 because the portmap plugin most distributions ship stops there; a runtime and
// portmap that speak 1.1.0 can raise it to get STATUS and GC.
const DefaultConflist = `{
  "cniVersion": "1.0.0",
  "name": "weave",
  "plugins": [
    {
      "type": "weave-cni",
      "bridge": "weave",
      "hairpinMode": true
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true },
      "snat": true
    }
  ]
}
`

// ConflistName is the file DefaultConflist is written to.
const ConflistName = "10-weave.conflist"

// InstallOptions say where Install puts the plugin and its configuration.
type InstallOptions struct {
	// Binary is the plugin to copy (default: the running executable).
	Binary string
	// BinDir receives the plugin as weave-cni (default /opt/cni/bin).
	BinDir string
	// ConfDir receives DefaultConflist when it holds no network configuration
	// (default /etc/cni/net.d).
	ConfDir string
	// SkipConf installs the plugin only.
	SkipConf bool
}

// Install copies the plugin into the CNI bin dir atomically (a runtime executing it
// meanwhile sees the old or the new file, never half of one) and writes the example
// conflist only when the conf dir has no configuration: an operator's own is never touched.
// It reports whether it wrote the conflist.
func Install(o InstallOptions) (wroteConf bool, err error) {
	if o.Binary == "" {
		if o.Binary, err = os.Executable(); err != nil {
			return false, fmt.Errorf("find own executable: %w", err)
		}
	}
	if o.BinDir == "" {
		o.BinDir = "/opt/cni/bin"
	}
	if o.ConfDir == "" {
		o.ConfDir = "/etc/cni/net.d"
	}
	src, err := os.Open(o.Binary)
	if err != nil {
		return false, fmt.Errorf("open plugin: %w", err)
	}
	defer src.Close()
	if err := writeAtomic(filepath.Join(o.BinDir, "weave-cni"), 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	}); err != nil {
		return false, fmt.Errorf("install plugin: %w", err)
	}
	if o.SkipConf {
		return false, nil
	}
	has, err := hasNetworkConf(o.ConfDir)
	if err != nil || has {
		return false, err
	}
	if err := writeAtomic(filepath.Join(o.ConfDir, ConflistName), 0o644, func(w io.Writer) error {
		_, err := io.WriteString(w, DefaultConflist)
		return err
	}); err != nil {
		return false, fmt.Errorf("write %s: %w", ConflistName, err)
	}
	return true, nil
}

// hasNetworkConf reports whether dir holds a configuration a runtime would load.
func hasNetworkConf(dir string) (bool, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if !e.IsDir() {
				return true, nil
			}
		}
	}
	return false, nil
}

func writeAtomic(path string, mode os.FileMode, fill func(io.Writer) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := fill(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// command runs weave-cni's own subcommands (invoked without CNI_COMMAND, e.g. by the
// DaemonSet): "install" and "status". ok is false when args name none of them.
func command(args []string, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case "install":
		fs := flag.NewFlagSet("weave-cni install", flag.ContinueOnError)
		fs.SetOutput(stderr)
		var o InstallOptions
		fs.StringVar(&o.BinDir, "bin-dir", "/opt/cni/bin", "CNI plugin directory")
		fs.StringVar(&o.ConfDir, "conf-dir", "/etc/cni/net.d", "CNI configuration directory")
		fs.BoolVar(&o.SkipConf, "no-conf", false, "do not write the example conflist")
		if err := fs.Parse(args[1:]); err != nil {
			return 2, true
		}
		wrote, err := Install(o)
		if err != nil {
			fmt.Fprintf(stderr, "weave-cni install: %v\n", err)
			return 1, true
		}
		fmt.Fprintf(stdout, "installed %s\n", filepath.Join(o.BinDir, "weave-cni"))
		if wrote {
			fmt.Fprintf(stdout, "wrote %s\n", filepath.Join(o.ConfDir, ConflistName))
		}
		return 0, true
	case "status":
		fs := flag.NewFlagSet("weave-cni status", flag.ContinueOnError)
		fs.SetOutput(stderr)
		socket := fs.String("socket", cmp.Or(os.Getenv("WEAVE_SOCKET"), api.DefaultSocket), "router control socket")
		if err := fs.Parse(args[1:]); err != nil {
			return 2, true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c := client.New(*socket)
		defer c.Close()
		st, err := c.Status(ctx)
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "not ready: %v\n", err)
			return 1, true
		case !st.Ready:
			fmt.Fprintf(stderr, "not ready: %s\n", cmp.Or(strings.TrimSpace(st.Waiting), "router starting"))
			return 1, true
		}
		fmt.Fprintln(stdout, "ready")
		return 0, true
	}
	return 0, false
}
