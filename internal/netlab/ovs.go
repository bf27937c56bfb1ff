package netlab

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DefaultOVSSchema is where Debian's openvswitch-common installs the Open_vSwitch schema.
const DefaultOVSSchema = "/usr/share/openvswitch/vswitch.ovsschema"

// OVSEnv keeps every Open vSwitch tool's default run, log, db and config directory inside
// dir, so nothing ever touches a system-wide /run/openvswitch.
func OVSEnv(dir string) []string {
	return []string{"OVS_RUNDIR=" + dir, "OVS_LOGDIR=" + dir, "OVS_DBDIR=" + dir, "OVS_SYSCONFDIR=" + dir}
}

// OVSDBCommand creates a fresh database in dir from schema (DefaultOVSSchema if empty) and
// returns the ovsdb-server command line that serves it on dir/db.sock.
func OVSDBCommand(ctx context.Context, dir, schema string) (argv []string, sock string, err error) {
	if schema == "" {
		schema = DefaultOVSSchema
	}
	db := filepath.Join(dir, "conf.db")
	if out, err := exec.CommandContext(ctx, "ovsdb-tool", "create", db, schema).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("netlab: ovsdb-tool create: %w: %s", err, out)
	}
	sock = filepath.Join(dir, "db.sock")
	return []string{"ovsdb-server", db,
		"--remote=punix:" + sock,
		"--pidfile=" + filepath.Join(dir, "ovsdb-server.pid"),
		"--unixctl=" + filepath.Join(dir, "ovsdb-server.ctl"),
		"--log-file=" + filepath.Join(dir, "ovsdb-server.log"),
	}, sock, nil
}

// Vsctl runs ovs-vsctl against the database at sock without waiting for ovs-vswitchd, and
// returns its trimmed output.
func Vsctl(sock string, args ...string) (string, error) {
	cmd := exec.Command("ovs-vsctl", append([]string{"--db=unix:" + sock, "--no-wait", "--timeout=5"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ovs-vsctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// InitOVSDB waits until the server at sock answers and creates the Open_vSwitch root row,
// as the packaged service does on first start.
func InitOVSDB(ctx context.Context, sock string) error {
	return WaitFor(ctx, 10*time.Second, func() error {
		_, err := Vsctl(sock, "init")
		return err
	})
}

// StartOVS runs ovsdb-server (database from schema; DefaultOVSSchema if empty) and
// ovs-vswitchd in h's namespace, every file in h's own directory, so that the hosts of a lab
// share nothing with each other or with a system-wide Open vSwitch. It returns the database
// socket. The lab stops both with its other processes.
func (h *Host) StartOVS(ctx context.Context, schema string) (sock string, err error) {
	dir, err := h.Dir()
	if err != nil {
		return "", err
	}
	argv, sock, err := OVSDBCommand(ctx, dir, schema)
	if err != nil {
		return "", err
	}
	if _, err := h.Start("ovsdb-server", OVSEnv(dir), argv...); err != nil {
		return "", err
	}
	if err := InitOVSDB(ctx, sock); err != nil {
		return "", fmt.Errorf("netlab: ovsdb-server in %s: %w", h.Name, err)
	}
	if _, err := h.Start("ovs-vswitchd", OVSEnv(dir), "ovs-vswitchd", "unix:"+sock,
		"--pidfile="+filepath.Join(dir, "ovs-vswitchd.pid"),
		"--unixctl="+filepath.Join(dir, "ovs-vswitchd.ctl"),
		"--log-file="+filepath.Join(dir, "ovs-vswitchd.log"),
	); err != nil {
		return "", err
	}
	return sock, nil
}

// OVSNetdevUnderlay moves h's underlay address from UnderlayLink onto a new OVS bridge of
// the userspace datapath (datapath_type netdev) named bridge that owns UnderlayLink: the
// userspace datapath routes and resolves tunnel endpoints only through its own bridges.
// The bridge is made with ovs-vsctl, so it is not tagged as weave's and survives weave's
// cleanup, as a host's own OVS configuration must.
func (h *Host) OVSNetdevUnderlay(ctx context.Context, sock, bridge string) error {
	if _, err := Vsctl(sock, "add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev",
		"--", "add-port", bridge, UnderlayLink); err != nil {
		return err
	}
	// ovs-vswitchd creates the bridge's own device asynchronously.
	if err := WaitFor(ctx, 10*time.Second, func() error {
		_, err := h.Run(ctx, "ip", "link", "show", "dev", bridge)
		return err
	}); err != nil {
		return fmt.Errorf("netlab: %s device of bridge %s: %w", h.Name, bridge, err)
	}
	pfx := netip.PrefixFrom(h.Addr, 24).String()
	for _, argv := range [][]string{
		// The userspace datapath never completes a partial checksum.
		{"ethtool", "-K", UnderlayLink, "tx", "off"},
		{"ip", "addr", "del", pfx, "dev", UnderlayLink},
		{"ip", "addr", "add", pfx, "dev", bridge},
		{"ip", "link", "set", bridge, "up"},
	} {
		if _, err := h.Run(ctx, argv...); err != nil {
			return err
		}
	}
	return nil
}
