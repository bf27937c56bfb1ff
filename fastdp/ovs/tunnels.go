package ovs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/weavemesh/weave/fastdp/ovs/vswitch"
	"github.com/weavemesh/weave/internal/logx"
)

// Tunnel ports: one VXLAN port per remote peer, active or quarantined in QuarantineVLAN.

// TunnelName is the OVS port (and interface) name of peer's VXLAN port: "wvx" and 12 hex
// digits, the peer name itself when it is a MAC-form mesh name, otherwise a hash of it.
func TunnelName(peer string) string {
	h := strings.ReplaceAll(strings.ToLower(peer), ":", "")
	if len(h) != 12 || strings.Trim(h, "0123456789abcdef") != "" {
		sum := sha256.Sum256([]byte(peer))
		h = hex.EncodeToString(sum[:6])
	}
	return tunnelPrefix + h
}

// AddPeer adds (or retargets) the VXLAN port to peer at its underlay address; a new port
// starts active (SetPeerActive).
func (b *Backend) AddPeer(peer string, remote netip.Addr) error { return b.addPeer(peer, remote, true) }

// addPeer is AddPeer; a port it creates starts quarantined unless active. A port that exists
// keeps its state.
func (b *Backend) addPeer(peer string, remote netip.Addr, active bool) error {
	if !remote.IsValid() || remote.IsUnspecified() || remote.IsMulticast() {
		return fmt.Errorf("ovs: add peer %s: bad remote address %v", peer, remote)
	}
	return b.locked(func(ctx context.Context) error {
		name := TunnelName(peer)
		opts := map[string]string{
			"remote_ip": remote.Unmap().String(),
			"dst_port":  strconv.Itoa(b.cfg.Port),
			"key":       strconv.FormatUint(uint64(b.cfg.VNI), 10),
		}
		var tag *int
		if !active {
			q := QuarantineVLAN
			tag = &q
		}
		if err := b.addPortTagged(ctx, name, "vxlan", opts, true, tag, b.ids(roleTunnel, KeyPeer, peer)); err != nil {
			return err
		}
		b.log.Debug("peer tunnel", logx.KeyPeer, peer, logx.KeyPort, name, logx.KeyAddr, remote)
		return nil
	})
}

// SetPeerActive lets frames flow through peer's tunnel port (active) or quarantines the port
// in QuarantineVLAN, where NORMAL neither floods to it nor delivers what arrives through it,
// while the port, its ofport and its tunnel stay (the switch-over the Linux backend does
// with its flood entries). Ports start active. OVS flushes the MACs learned on a port whose
// VLAN changes, so nothing stale points at it either way.
func (b *Backend) SetPeerActive(peer string, active bool) error {
	return b.locked(func(ctx context.Context) error {
		name := TunnelName(peer)
		p := b.port(name)
		if p == nil {
			return fmt.Errorf("ovs: set peer %s active: no tunnel port %s", peer, name)
		}
		if !b.ours(p.ExternalIDs) {
			return fmt.Errorf("ovs: port %s: %w", name, ErrNotOurs)
		}
		var tag *int
		if !active {
			q := QuarantineVLAN
			tag = &q
		}
		if (p.Tag == nil) == (tag == nil) {
			return nil
		}
		upd := *p
		upd.Tag, upd.Trunks = tag, trunksFor(tag)
		ops, err := b.ovs.Where(&upd).Update(&upd, &upd.Tag, &upd.Trunks)
		if err != nil {
			return fmt.Errorf("ovs: set peer %s active=%v: %w", peer, active, err)
		}
		return b.transact(ctx, "set tag of "+name, func() bool {
			p := b.port(name)
			return p != nil && (p.Tag == nil) == active
		}, ops...)
	})
}

// PeerActive reports whether peer has a tunnel port of ours and whether it is active.
func (b *Backend) PeerActive(peer string) (exists, active bool) {
	p := b.port(TunnelName(peer))
	if p == nil || !b.ours(p.ExternalIDs) {
		return false, false
	}
	return true, p.Tag == nil
}

// RemovePeer removes peer's VXLAN port; a peer without one is not an error.
func (b *Backend) RemovePeer(peer string) error {
	return b.locked(func(ctx context.Context) error {
		return b.removePort(ctx, TunnelName(peer))
	})
}

// RemoveAllPeers removes every tunnel port of ours: what an earlier run left, before the
// peers come back one by one.
func (b *Backend) RemoveAllPeers() error {
	return b.locked(func(ctx context.Context) error {
		var ports []vswitch.Port
		_ = b.ovs.WhereCache(func(p *vswitch.Port) bool {
			return b.ours(p.ExternalIDs) && p.ExternalIDs[KeyRole] == roleTunnel
		}).List(ctx, &ports)
		for _, p := range ports {
			if err := b.removePort(ctx, p.Name); err != nil {
				return err
			}
		}
		return nil
	})
}

// TunnelStats returns the statistics column of every tunnel interface of ours, by peer, as
// ovs-vswitchd last wrote it (every few seconds: other_config:stats-update-interval).
func (b *Backend) TunnelStats() map[string]map[string]int {
	var ifs []vswitch.Interface
	_ = b.ovs.WhereCache(func(i *vswitch.Interface) bool {
		return b.ours(i.ExternalIDs) && i.ExternalIDs[KeyRole] == roleTunnel
	}).List(context.Background(), &ifs)
	out := make(map[string]map[string]int, len(ifs))
	for _, i := range ifs {
		out[i.ExternalIDs[KeyPeer]] = i.Statistics
	}
	return out
}

// Peers returns the peers with a tunnel port of ours and the address each one points at.
func (b *Backend) Peers() map[string]netip.Addr {
	var ifs []vswitch.Interface
	_ = b.ovs.WhereCache(func(i *vswitch.Interface) bool {
		return b.ours(i.ExternalIDs) && i.ExternalIDs[KeyRole] == roleTunnel
	}).List(context.Background(), &ifs)
	out := make(map[string]netip.Addr, len(ifs))
	for _, i := range ifs {
		a, _ := netip.ParseAddr(i.Options["remote_ip"])
		out[i.ExternalIDs[KeyPeer]] = a
	}
	return out
}
