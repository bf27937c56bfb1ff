package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/weavemesh/weave/daemon"
)

var errHelp = errors.New("help requested")

type options struct {
	cfg          daemon.Config
	logLevel     string
	logFormat    string
	printVersion bool
	reset        bool
}

// parseFlags turns arguments and environment into options. Flags may come before, between or
// after the peer addresses, as with Weave. Environment variables of Weave's DaemonSet
// (IPALLOC_RANGE, IPALLOC_INIT, CONN_LIMIT, WEAVE_MTU, WEAVE_NO_FASTDP, WEAVE_PASSWORD,
// EXTRA_ARGS) set defaults that flags override, so Weave manifests translate line by line;
// WEAVE_DATAPATH, WEAVE_OVS_SOCKET and WEAVE_OVS_DATAPATH_TYPE are ours, in the same style.
func parseFlags(args []string, getenv func(string) string) (options, error) {
	o := options{cfg: daemon.DefaultConfig(), logLevel: "info", logFormat: "text"}
	c := &o.cfg
	if extra := getenv("EXTRA_ARGS"); extra != "" {
		args = append(strings.Fields(extra), args...)
	}
	envStr := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	envStr("WEAVE_STATE_DIR", &c.StateDir)
	envStr("WEAVE_SOCKET", &c.Socket)
	envStr("IPALLOC_INIT", &c.IPAllocInit)
	envStr("WEAVE_DATAPATH", &c.Datapath)
	envStr("WEAVE_OVS_SOCKET", &c.OVSSocket)
	envStr("WEAVE_OVS_DATAPATH_TYPE", &c.OVSDatapathType)
	var (
		password, passwordFile, ipRange, trusted, subnet string
		envErrs                                          []error
	)
	envStr("WEAVE_PASSWORD", &password)
	envStr("IPALLOC_RANGE", &ipRange)
	envInt := func(name string, dst *int) {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("environment %s=%q: not a number", name, v))
				return
			}
			*dst = n
		}
	}
	envInt("WEAVE_PORT", &c.Port)
	envInt("CONN_LIMIT", &c.ConnLimit)
	envInt("WEAVE_MTU", &c.MTU)
	if v := getenv("WEAVE_NO_FASTDP"); v != "" && v != "0" && v != "false" {
		c.NoFastDP = true
	}
	if err := errors.Join(envErrs...); err != nil {
		return o, err
	}

	fs := flag.NewFlagSet("weaver", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.Name, "name", c.Name, "peer name (MAC form); default: derived once and kept in the state dir")
	fs.StringVar(&c.NickName, "nickname", c.NickName, "nickname shown to users (default: hostname)")
	fs.StringVar(&password, "password", password, "password that encrypts the network (env WEAVE_PASSWORD)")
	fs.StringVar(&passwordFile, "password-file", "", "file holding the password")
	fs.IntVar(&c.Port, "port", c.Port, "TCP control and UDP sleeve port; port+1 is the VXLAN port")
	fs.StringVar(&ipRange, "ipalloc-range", ipRange, "IP range the IPAM hands out (default 10.32.0.0/12)")
	fs.StringVar(&c.IPAllocInit, "ipalloc-init", c.IPAllocInit, "consensus[=N], seed=NAME,... or observer")
	fs.StringVar(&subnet, "ipalloc-default-subnet", "", "subnet addresses come from when none is asked for (default: the whole range)")
	fs.DurationVar(&c.IPAllocReclaimAfter, "ipalloc-reclaim-after", 0, "take over the space of a peer agreed dead for this long (0: never; use rmpeer)")
	fs.IntVar(&c.ConnLimit, "conn-limit", c.ConnLimit, "maximum number of connections (0: unlimited)")
	fs.IntVar(&c.MTU, "mtu", c.MTU, "MTU of the bridge and containers (0: computed from the underlay)")
	fs.BoolVar(&c.NoFastDP, "no-fastdp", c.NoFastDP, "never use the kernel VXLAN data path")
	fs.StringVar(&c.Datapath, "datapath", c.Datapath, "kernel data path: linux (a VXLAN device) or ovs (an Open vSwitch bridge) (env WEAVE_DATAPATH)")
	fs.StringVar(&c.OVSSocket, "ovs-socket", c.OVSSocket, "ovsdb-server socket for --datapath=ovs (env WEAVE_OVS_SOCKET)")
	fs.StringVar(&c.OVSDatapathType, "ovs-datapath-type", c.OVSDatapathType, "datapath_type of the OVS bridge: empty (system) or netdev (env WEAVE_OVS_DATAPATH_TYPE)")
	fs.BoolVar(&c.NoDiscovery, "no-discovery", c.NoDiscovery, "do not dial peers learned from gossip")
	fs.StringVar(&trusted, "trusted-subnets", "", "comma-separated CIDRs whose peers exchange data unencrypted")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "address for Prometheus metrics (empty: off)")
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", o.logFormat, "text or json")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "state directory (env WEAVE_STATE_DIR)")
	fs.StringVar(&c.Socket, "socket", c.Socket, "control API socket (env WEAVE_SOCKET)")
	fs.BoolVar(&o.printVersion, "version", false, "print the version and exit")
	fs.BoolVar(&o.reset, "reset", false, "remove the bridge, devices and state of a stopped router, then exit")

	var peers []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stdout)
				fmt.Println("usage: weaver [flags] [PEER...]   (PEER is host[:port])")
				fs.PrintDefaults()
				return o, errHelp
			}
			return o, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		peers = append(peers, args[0])
		args = args[1:]
	}
	c.Peers = peers

	if passwordFile != "" {
		b, err := os.ReadFile(passwordFile)
		if err != nil {
			return o, fmt.Errorf("--password-file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
		if password == "" {
			return o, fmt.Errorf("--password-file %s is empty", passwordFile)
		}
	}
	if password != "" {
		c.Password = []byte(password)
	}
	if ipRange != "" {
		p, err := netip.ParsePrefix(ipRange)
		if err != nil {
			return o, fmt.Errorf("--ipalloc-range %q: %w", ipRange, err)
		}
		c.IPAllocRange = p.Masked()
	}
	if subnet != "" {
		p, err := netip.ParsePrefix(subnet)
		if err != nil {
			return o, fmt.Errorf("--ipalloc-default-subnet %q: %w", subnet, err)
		}
		c.IPAllocDefaultSubnet = p.Masked()
	}
	if c.IPAllocReclaimAfter < 0 {
		return o, fmt.Errorf("--ipalloc-reclaim-after %v is negative", c.IPAllocReclaimAfter)
	}
	if trusted != "" {
		for _, s := range strings.Split(trusted, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil {
				return o, fmt.Errorf("--trusted-subnets: %w", err)
			}
			c.TrustedSubnets = append(c.TrustedSubnets, p.Masked())
		}
	}
	return o, nil
}
