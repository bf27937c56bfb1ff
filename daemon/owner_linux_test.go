package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netdev"
)

func ownerTestConfig(t *testing.T, bridge string) Config {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.Socket = cfg.StateDir + "/weave.sock"
	cfg.Logger = logx.Discard()
	cfg.Links = netdev.NewFake()
	cfg.NickName = "owner"
	cfg.Bridge = bridge
	return cfg
}

// TestSecondDaemonOnBridgeRefusedBeforeStart: a second router with another state dir in the
// same network namespace cannot take the bridge, so it never reaches Start, which would
// rewrite the first one's bridge MAC and MTU (issue #12, scenario 8). The lock goes with
// the first router.
func TestSecondDaemonOnBridgeRefusedBeforeStart(t *testing.T) {
	bridge := fmt.Sprintf("wt%d", os.Getpid()%100000)
	first, err := New(ownerTestConfig(t, bridge))
	if err != nil {
		t.Fatal(err)
	}
	second, err := New(ownerTestConfig(t, bridge))
	if err == nil {
		second.Close()
		t.Fatal("second router on the same bridge and namespace accepted")
	}
	if !strings.Contains(err.Error(), "belongs to another running weaver") {
		t.Errorf("error %q does not say why", err)
	}
	first.Close()
	third, err := New(ownerTestConfig(t, bridge))
	if err != nil {
		t.Fatalf("bridge not free after the first router closed: %v", err)
	}
	third.Close()
}

// TestNewRefusesBadSettings: settings the handshake or IPAM would refuse later are refused
// by New, before Start creates any device (issue #12, scenario 8).
func TestNewRefusesBadSettings(t *testing.T) {
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"nickname control char": {func(c *Config) { c.NickName = "a\x07b" }, "nickname"},
		"nickname too long":     {func(c *Config) { c.NickName = strings.Repeat("n", 256) }, "nickname"},
		"ipalloc-init":          {func(c *Config) { c.IPAllocInit = "consensus=-1" }, "ipalloc-init"},
		"ipalloc-init seed":     {func(c *Config) { c.IPAllocInit = "seed=nonsense" }, "ipalloc-init"},
		"subnet outside range": {func(c *Config) {
			c.IPAllocDefaultSubnet = netipMust("192.168.0.0/24")
		}, "default subnet"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := ownerTestConfig(t, fmt.Sprintf("wv%d", os.Getpid()%100000))
			tc.mod(&cfg)
			d, err := New(cfg)
			if err == nil {
				d.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if ok, _ := cfg.Links.Exists(cfg.Bridge); ok {
				t.Error("bridge created by a refused router")
			}
		})
	}
}

func netipMust(s string) netip.Prefix { return netip.MustParsePrefix(s) }
