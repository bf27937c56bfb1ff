package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/fastdp/guard"
	"github.com/weavemesh/weave/internal/netdev"
)

// stateFiles are the files the router keeps in its state dir; reset removes exactly these
// (and their temporary siblings), never anything else a user may have put there.
var stateFiles = []string{"peer-name", "targets", "endpoints.json", "weaver.lock", "weaver.log", ipamDBFile, ipamMemberFile}

// Reset removes everything a router leaves on a host: the bridge with its ports (TAP,
// container veths), the kernel path and its nftables guard, and the state files. It refuses while a router uses the state dir.
func Reset(cfg Config) error {
	if cfg.Links == nil {
		cfg.Links = netdev.Netlink{}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// A daemon reset through the API may still be finishing; give it time to let go.
	lock, err := lockStateDir(cfg.StateDir, 20*time.Second)
	if err != nil {
		return err
	}
	defer lock.Close()
	// Another router (other state dir) may own the bridge in this namespace: not ours to remove.
	owner, err := lockBridge(cfg.Bridge, 20*time.Second)
	if err != nil {
		return err
	}
	defer owner.Close()
	return cleanupHost(cfg)
}

func cleanupHost(cfg Config) error {
	var errs []error
	if err := cfg.Links.DeleteBridge(cfg.Bridge); err != nil {
		errs = append(errs, err)
	}
	if err := cfg.Links.Delete(cfg.TAP); err != nil {
		errs = append(errs, err)
	}
	if err := fastdp.Cleanup("", fastdp.DefaultDevice(cfg.Port+1)); err != nil {
		errs = append(errs, err)
	}
	if err := cleanupOVS(cfg); err != nil {
		errs = append(errs, err)
	}
	// After the devices: the filter guarded their port to the last moment.
	if err := guard.Remove(""); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove socket: %w", err))
	}
	entries, err := os.ReadDir(cfg.StateDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read state dir: %w", err))
	}
	for _, e := range entries {
		name := e.Name()
		for _, f := range stateFiles {
			if name == f || strings.HasPrefix(name, f+".") {
				if err := os.Remove(filepath.Join(cfg.StateDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
				}
			}
		}
	}
	// The directory goes too when nothing else is in it.
	_ = os.Remove(cfg.StateDir)
	return errors.Join(errs...)
}
