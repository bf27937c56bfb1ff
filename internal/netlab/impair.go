package netlab

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Our iptables chains in host namespaces. They are hooked at the top of INPUT and OUTPUT, so
// they act before any rule the daemon under test installs, and they are matched on the underlay
// link only: loopback (metrics, local API) and the container bridge are never impaired.
const (
	chainFirewall = "NETLAB-FW"
	chainLoss     = "NETLAB-LOSS"
	impairLimit   = 30 * time.Second
)

// Firewall drops all TCP and UDP between a and b, both ways (ICMP still passes, so ping keeps
// working: it is what a firewall that "blocks the ports" looks like). Rules match the peer's
// PublicAddr, so they also cover NATed hosts.
func (l *Lab) Firewall(a, b *Host) error { return l.firewall(a, b, true) }

// Unfirewall undoes Firewall. It is a no-op for a pair that is not firewalled.
func (l *Lab) Unfirewall(a, b *Host) error { return l.firewall(a, b, false) }

func (l *Lab) firewall(a, b *Host, add bool) error {
	if err := l.checkPair(a, b); err != nil {
		return err
	}
	for _, pair := range [][2]*Host{{a, b}, {b, a}} {
		self, peer := pair[0], pair[1]
		for _, proto := range []string{"tcp", "udp"} {
			for _, dir := range []string{"-s", "-d"} {
				if err := self.rule(add, chainFirewall, dir, peer.PublicAddr.String(), "-p", proto, "-j", "DROP"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// BlockUDPPort drops UDP datagrams to port between a and b, both ways (whatever their source
// port: a VXLAN sender picks a random one). Other traffic between the pair still flows.
func (l *Lab) BlockUDPPort(a, b *Host, port int) error { return l.blockUDP(a, b, port, true) }

// UnblockUDPPort undoes BlockUDPPort.
func (l *Lab) UnblockUDPPort(a, b *Host, port int) error { return l.blockUDP(a, b, port, false) }

func (l *Lab) blockUDP(a, b *Host, port int, add bool) error {
	if err := l.checkPair(a, b); err != nil {
		return err
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("netlab: udp port %d out of range", port)
	}
	p := strconv.Itoa(port)
	for _, pair := range [][2]*Host{{a, b}, {b, a}} {
		self, peer := pair[0], pair[1]
		for _, dir := range []string{"-s", "-d"} {
			if err := self.rule(add, chainFirewall, dir, peer.PublicAddr.String(), "-p", "udp", "--dport", p, "-j", "DROP"); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *Lab) checkPair(a, b *Host) error {
	if a == nil || b == nil || a.lab != l || b.lab != l {
		return errors.New("netlab: host does not belong to this lab")
	}
	if a == b {
		return errors.New("netlab: a host cannot be firewalled from itself")
	}
	return nil
}

// DropPercent makes h's underlay link drop pct percent of packets at random, independently in
// each direction (iptables statistic: there is no netem here), so a round trip is lost with
// probability 1-(1-pct/100)². pct 0 removes the loss.
func (l *Lab) DropPercent(h *Host, pct int) error {
	if h == nil || h.lab != l {
		return errors.New("netlab: host does not belong to this lab")
	}
	if pct < 0 || pct > 100 {
		return fmt.Errorf("netlab: drop percentage %d out of range 0..100", pct)
	}
	if err := h.ensureChain(chainLoss); err != nil {
		return err
	}
	h.ipt.Lock()
	defer h.ipt.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), impairLimit)
	defer cancel()
	if _, err := h.Run(ctx, "iptables", "-w", "-F", chainLoss); err != nil {
		return fmt.Errorf("clear loss on %s: %w", h.Name, err)
	}
	if pct == 0 {
		return nil
	}
	prob := strconv.FormatFloat(float64(pct)/100, 'f', 4, 64)
	if _, err := h.Run(ctx, "iptables", "-w", "-A", chainLoss,
		"-m", "statistic", "--mode", "random", "--probability", prob, "-j", "DROP"); err != nil {
		return fmt.Errorf("set loss on %s: %w", h.Name, err)
	}
	return nil
}

// SetMTU sets the MTU of h's link to the underlay at both ends: the host's (or, behind a NAT,
// the NAT's) "eth0" and its port on the underlay bridge. Larger frames towards h are dropped
// silently by the bridge, as on a real L2 segment with mismatched MTUs; behind a NAT, h's own
// link keeps its MTU and the NAT answers oversize DF packets with ICMP "fragmentation needed".
func (l *Lab) SetMTU(h *Host, mtu int) error {
	if h == nil || h.lab != l {
		return errors.New("netlab: host does not belong to this lab")
	}
	if mtu < 576 || mtu > 65535 {
		return fmt.Errorf("netlab: MTU %d out of range 576..65535", mtu)
	}
	ctx, cancel := context.WithTimeout(context.Background(), impairLimit)
	defer cancel()
	edge := h.Name
	if h.NAT != "" {
		edge = h.NAT
	}
	m := strconv.Itoa(mtu)
	if err := l.ipAll(ctx, edge, []string{"link", "set", UnderlayLink, "mtu", m}); err != nil {
		return fmt.Errorf("set mtu of %s: %w", h.Name, err)
	}
	if err := l.ipAll(ctx, l.Underlay, []string{"link", "set", portName(h.Index), "mtu", m}); err != nil {
		return fmt.Errorf("set mtu of %s: %w", h.Name, err)
	}
	return nil
}

// ensureChain creates one of our chains in h's namespace and hooks it into INPUT and OUTPUT
// for the underlay link, once.
func (h *Host) ensureChain(chain string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.chains[chain] {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), impairLimit)
	defer cancel()
	for _, argv := range [][]string{
		{"iptables", "-w", "-N", chain},
		{"iptables", "-w", "-I", "INPUT", "1", "-i", UnderlayLink, "-j", chain},
		{"iptables", "-w", "-I", "OUTPUT", "1", "-o", UnderlayLink, "-j", chain},
	} {
		if _, err := h.Run(ctx, argv...); err != nil {
			return fmt.Errorf("hook chain %s in %s: %w", chain, h.Name, err)
		}
	}
	if h.chains == nil {
		h.chains = map[string]bool{}
	}
	h.chains[chain] = true
	return nil
}

// rule adds (once) or deletes (if present) one rule in one of our chains in h's namespace.
func (h *Host) rule(add bool, chain string, spec ...string) error {
	if err := h.ensureChain(chain); err != nil {
		return err
	}
	// Check-then-change must not interleave with another change of the same host.
	h.ipt.Lock()
	defer h.ipt.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), impairLimit)
	defer cancel()
	check := append([]string{"iptables", "-w", "-C", chain}, spec...)
	_, cerr := h.Run(ctx, check...)
	present := cerr == nil
	var op string
	switch {
	case add && !present:
		op = "-A"
	case !add && present:
		op = "-D"
	default:
		return nil
	}
	if _, err := h.Run(ctx, append([]string{"iptables", "-w", op, chain}, spec...)...); err != nil {
		return fmt.Errorf("firewall rule in %s: %w", h.Name, err)
	}
	return nil
}
