package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/fastdp/ovs"
	"github.com/weavemesh/weave/internal/logx"
)

// Kernel path backends (--datapath).
const (
	DatapathLinux = "linux"
	DatapathOVS   = "ovs"
	// DefaultOVSSocket is where the packaged ovsdb-server listens.
	DefaultOVSSocket = "unix:/var/run/openvswitch/db.sock"
)

// ovsStateFile, in the state dir, holds the ovsdb-server socket of the OVS bridge we
// configured: `weavectl reset` runs `weaver --reset` without the launch flags, and must
// still find what to remove. It goes once that is done.
const ovsStateFile = "ovs-datapath"

// ovsCleanupTimeout bounds reset's wait for an ovsdb-server that does not answer.
const ovsCleanupTimeout = 5 * time.Second

func (c *Config) validateDatapath() error {
	var errs []error
	switch c.Datapath {
	case "", DatapathLinux, DatapathOVS:
	default:
		errs = append(errs, fmt.Errorf("--datapath %q: want linux or ovs", c.Datapath))
	}
	switch c.OVSDatapathType {
	case "", "system", "netdev":
	default:
		errs = append(errs, fmt.Errorf("--ovs-datapath-type %q: want system or netdev", c.OVSDatapathType))
	}
	if c.Datapath == DatapathOVS {
		if _, err := ovsSocketPath(c.OVSSocket); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ovsSocketPath turns --ovs-socket ("unix:PATH" or PATH) into a path; libovsdb's other
// transports (tcp:, ssl:) are not offered: the database of the local switch is local.
func ovsSocketPath(s string) (string, error) {
	p := strings.TrimPrefix(s, "unix:")
	if p == "" || !filepath.IsAbs(p) {
		return "", fmt.Errorf("--ovs-socket %q: want unix:/absolute/path", s)
	}
	return p, nil
}

// ovsKernel returns the Open vSwitch implementation of fastdp.Kernel when --datapath=ovs
// (nil otherwise), so that fastdp's heartbeats, hysteresis, reasons and switch-over run
// unchanged over an OVS bridge joined to the weave bridge. An ovsdb-server that cannot be
// reached fails the start: the user asked for OVS by name.
func (dp *dataPlane) ovsKernel() (fastdp.Kernel, error) {
	d := dp.d
	// A router that changes backend across a stop must not leave the other one's device on
	// the bridge: its entries from the last run would still carry frames (duplicates).
	if d.cfg.Datapath != DatapathOVS {
		return nil, dp.removeOVS()
	}
	if err := fastdp.Cleanup("", fastdp.DefaultDevice(d.cfg.Port+1)); err != nil {
		return nil, fmt.Errorf("remove the VXLAN device of an earlier --datapath=linux run: %w", err)
	}
	sock, err := ovsSocketPath(d.cfg.OVSSocket)
	if err != nil {
		return nil, err
	}
	log := d.log.With(logx.KeyComponent, "ovs")
	links, err := ovs.NewNetlinkLinks("")
	if err != nil {
		return nil, err
	}
	b, err := ovs.New(context.Background(), ovs.Config{Socket: sock, DatapathType: d.cfg.OVSDatapathType,
		Port: d.cfg.Port + 1, VNI: fastdp.VNIFor(d.cfg.IPAllocRange.String()), Links: links, Logger: log})
	if err != nil {
		links.Close()
		return nil, err
	}
	// Recorded before anything is created, so that a reset finds even a half-made setup.
	if err := os.WriteFile(filepath.Join(d.cfg.StateDir, ovsStateFile), []byte(sock+"\n"), 0o600); err != nil {
		b.Close()
		links.Close()
		return nil, fmt.Errorf("ovs: record the datapath for reset: %w", err)
	}
	k, err := ovs.NewKernel(ovs.KernelConfig{Backend: b, Links: links, Bridge: d.cfg.Bridge, MTU: d.mtu,
		Isolate: []string{d.cfg.TAP}, Logger: log})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// removeOVS removes the OVS setup an earlier --datapath=ovs run recorded in the state dir,
// if any.
func (dp *dataPlane) removeOVS() error {
	d := dp.d
	if _, err := os.Stat(filepath.Join(d.cfg.StateDir, ovsStateFile)); err != nil {
		return nil
	}
	d.log.Info("removing the OVS setup of an earlier --datapath=ovs run")
	if err := cleanupOVS(d.cfg); err != nil {
		// OVS is unreachable (gone?): at least cut our OVS bridge off the weave bridge;
		// the rest waits for a reset.
		d.log.Warn("cannot remove the OVS setup; detaching it from the bridge", logx.KeyErr, err)
		return detachOVSUplink()
	}
	return nil
}

// detachOVSUplink deletes the veth pair joining our OVS bridge to the weave bridge.
func detachOVSUplink() error {
	links, err := ovs.NewNetlinkLinks("")
	if err != nil {
		return err
	}
	defer links.Close()
	if err := links.DeleteLink(ovs.UplinkOVS); err != nil {
		return fmt.Errorf("ovs: delete %s: %w", ovs.UplinkOVS, err)
	}
	return nil
}

// closeKernel closes a kernel that fastdp.New did not take over.
func closeKernel(k fastdp.Kernel) {
	if k != nil {
		k.Close()
	}
}

// cleanupOVS removes our OVS bridge, its ports and our veths, when this state dir recorded
// one (or the flags ask for OVS). The record stays when ovsdb-server cannot be reached, so
// that a later reset tries again.
func cleanupOVS(cfg Config) error {
	record := filepath.Join(cfg.StateDir, ovsStateFile)
	sock := ""
	if b, err := os.ReadFile(record); err == nil {
		sock = strings.TrimSpace(string(b))
	} else if cfg.Datapath == DatapathOVS {
		sock, _ = ovsSocketPath(cfg.OVSSocket)
	}
	if sock == "" {
		return nil
	}
	links, err := ovs.NewNetlinkLinks("")
	if err != nil {
		return fmt.Errorf("ovs cleanup: %w", err)
	}
	defer links.Close()
	b, err := ovs.New(context.Background(), ovs.Config{Socket: sock, Links: links, Timeout: ovsCleanupTimeout,
		Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("ovs cleanup (the OVS bridge stays; reset again once ovsdb-server runs): %w", err)
	}
	defer b.Close()
	if err := b.Cleanup(); err != nil {
		return fmt.Errorf("ovs cleanup: %w", err)
	}
	if err := os.Remove(record); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ovs cleanup: %w", err)
	}
	return nil
}
