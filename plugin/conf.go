package plugin

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weavemesh/weave/api"
)

// maxConfBytes bounds the net conf the plugin accepts: a real one is a few hundred bytes, and
// a runtime that sends megabytes is broken, not configuring us.
const maxConfBytes = 1 << 20

// NetConf is the plugin's network configuration (CONTRACT.md, "CNI plugin").
type NetConf struct {
	types.PluginConf
	// Bridge is the router's bridge the containers are attached to (default weave).
	Bridge string `json:"bridge,omitempty"`
	// MTU of the container interfaces; 0: the router's bridge MTU.
	MTU int `json:"mtu,omitempty"`
	// HairpinMode lets a pod reach itself through a service address (default true).
	HairpinMode *bool `json:"hairpinMode,omitempty"`
	// Socket is the router's control socket (default /run/weave/weave.sock).
	Socket string `json:"socket,omitempty"`
	// IPAM: with no type the router's own IPAM; with a type, that plugin is delegated to.
	IPAM IPAMConf `json:"ipam,omitempty"`
}

// IPAMConf is the ipam section. Subnet applies to the router's IPAM (a subnet of its range);
// every other field is for the delegated plugin, which reads the whole config itself.
type IPAMConf struct {
	Type   string `json:"type,omitempty"`
	Subnet string `json:"subnet,omitempty"`
}

// Hairpin reports whether hairpin mode is on (the default).
func (c *NetConf) Hairpin() bool { return c.HairpinMode == nil || *c.HairpinMode }

// ParseNetConf decodes and validates a net conf from the runtime. Errors are CNI errors
// (*types.Error) whose message says what to fix.
func ParseNetConf(data []byte) (*NetConf, error) {
	if len(data) > maxConfBytes {
		return nil, types.NewError(types.ErrDecodingFailure, "weave-cni: network configuration too large",
			fmt.Sprintf("%d bytes, at most %d", len(data), maxConfBytes))
	}
	c := &NetConf{}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "weave-cni: network configuration is not valid JSON", err.Error())
	}
	// PluginConf.IPAM shadows ours in the JSON above only through the embedded field's
	// tag; keep both in step so callers can use either.
	c.PluginConf.IPAM.Type = c.IPAM.Type
	if c.Bridge == "" {
		c.Bridge = api.DefaultBridge
	}
	if c.Socket == "" {
		c.Socket = api.DefaultSocket
	}
	if err := c.validate(); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "weave-cni: invalid network configuration", err.Error())
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "weave-cni: cannot decode prevResult", err.Error())
		}
	}
	return c, nil
}

func (c *NetConf) validate() error {
	if c.CNIVersion == "" {
		return fmt.Errorf("cniVersion is missing")
	}
	if c.Name == "" {
		// The network name keys the router's allocations (and scopes GC to this network).
		return fmt.Errorf("name is missing")
	}
	if !validIfName(c.Bridge) {
		return fmt.Errorf("bridge %q is not a valid interface name (1-15 characters, no '/', ':' or spaces)", c.Bridge)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return fmt.Errorf("mtu %d is out of range (576-65535, or 0 for the router's)", c.MTU)
	}
	if !filepath.IsAbs(c.Socket) || len(c.Socket) > 107 {
		return fmt.Errorf("socket %q must be an absolute path of at most 107 bytes", c.Socket)
	}
	if c.IPAM.Subnet != "" {
		if c.IPAM.Type != "" {
			return fmt.Errorf("ipam.subnet is for the router's IPAM; with ipam.type %q configure that plugin instead", c.IPAM.Type)
		}
		p, err := netip.ParsePrefix(c.IPAM.Subnet)
		if err != nil || !p.Addr().Is4() || p != p.Masked() {
			return fmt.Errorf("ipam.subnet %q is not an IPv4 network (e.g. 10.32.0.0/16)", c.IPAM.Subnet)
		}
	}
	if c.IPAM.Type != "" && (strings.ContainsAny(c.IPAM.Type, `/\`) || c.IPAM.Type == "." || c.IPAM.Type == "..") {
		return fmt.Errorf("ipam.type %q must be a plugin name, not a path", c.IPAM.Type)
	}
	return nil
}

func validIfName(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}
