package vm

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/vmlab"
)

// TestVMKernelESP proves the kernel path the encrypted fastdp will take: in the VM the
// ESP/XFRM/AES-GCM modules load, transport-mode ESP SAs with rfc4106(gcm(aes)) and policies
// are created over netlink (vishvananda/netlink, as fastdp will), and a ping between two lab
// hosts really goes through them (the SAs count its packets both ways).
func TestVMKernelESP(t *testing.T) {
	if !vmlab.Require(t, vmlab.Modules("esp4", "xfrm_user", "xfrm_algo", "aesni_intel", "gcm", "seqiv")) {
		return
	}
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	h1, h2 := lab.Hosts[0], lab.Hosts[1]
	a1, a2 := net.IP(h1.Addr.AsSlice()), net.IP(h2.Addr.AsSlice())
	key := func(b byte) []byte { return bytes.Repeat([]byte{b}, 36) } // AES-256 key + 4-byte salt
	sa := func(src, dst net.IP, spi int, k []byte) *netlink.XfrmState {
		return &netlink.XfrmState{
			Src: src, Dst: dst, Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT,
			Spi: spi, ReplayWindow: 32,
			Aead: &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: k, ICVLen: 128},
		}
	}
	pol := func(src, dst net.IP, dir netlink.Dir, spi int) *netlink.XfrmPolicy {
		return &netlink.XfrmPolicy{
			Src: &net.IPNet{IP: src, Mask: net.CIDRMask(32, 32)}, Dst: &net.IPNet{IP: dst, Mask: net.CIDRMask(32, 32)},
			Dir: dir, Tmpls: []netlink.XfrmPolicyTmpl{{Src: src, Dst: dst, Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT, Spi: spi}},
		}
	}
	program := func(self, peer net.IP, outSPI, inSPI int) error {
		for _, s := range []*netlink.XfrmState{sa(self, peer, outSPI, key(byte(outSPI))), sa(peer, self, inSPI, key(byte(inSPI)))} {
			if err := netlink.XfrmStateAdd(s); err != nil {
				return fmt.Errorf("add SA spi %#x: %w", s.Spi, err)
			}
		}
		for _, p := range []*netlink.XfrmPolicy{pol(self, peer, netlink.XFRM_DIR_OUT, outSPI), pol(peer, self, netlink.XFRM_DIR_IN, inSPI)} {
			if err := netlink.XfrmPolicyAdd(p); err != nil {
				return fmt.Errorf("add policy %v: %w", p.Dir, err)
			}
		}
		return nil
	}
	if err := h1.Do(func() error { return program(a1, a2, 0x101, 0x102) }); err != nil {
		t.Fatalf("%s: %v", h1.Name, err)
	}
	if err := h2.Do(func() error { return program(a2, a1, 0x102, 0x101) }); err != nil {
		t.Fatalf("%s: %v", h2.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	loss, _, err := netlab.Ping(ctx, h1, h2.Addr, 5)
	if err != nil || loss > 0 {
		t.Fatalf("ping through ESP: loss %v, err %v", loss, err)
	}
	for _, h := range []*netlab.Host{h1, h2} {
		err := h.Do(func() error {
			states, err := netlink.XfrmStateList(netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			if len(states) != 2 {
				return fmt.Errorf("%d SAs, want 2", len(states))
			}
			for _, s := range states {
				if s.Aead == nil || s.Aead.Name != "rfc4106(gcm(aes))" {
					return fmt.Errorf("SA %#x has AEAD %+v", s.Spi, s.Aead)
				}
				if s.ReplayWindow == 0 {
					return fmt.Errorf("SA %#x has no replay window", s.Spi)
				}
				if s.Statistics.Packets < 5 {
					return fmt.Errorf("SA %#x carried %d packets, want the 5 pings", s.Spi, s.Statistics.Packets)
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: %v", h.Name, err)
		}
	}
}
