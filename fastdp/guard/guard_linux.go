package guard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/weavemesh/weave/internal/logx"
	"golang.org/x/sys/unix"
)

const (
	set4      = "peers4"
	set6      = "peers6"
	chainName = "input"
)

// Guard owns the guard table of the current network namespace. Its methods are safe for
// concurrent use.
type Guard struct {
	cfg  Config
	log  *slog.Logger
	port int

	mu     sync.Mutex // serialises transactions on conn
	conn   *nftables.Conn
	table  *nftables.Table
	s4, s6 *nftables.Set
	closed bool
}

// Open (re)creates the guard table in the current network namespace with empty sets, so
// that from now on the port accepts nobody until Allow; whatever a previous run left is
// replaced in the same transaction.
func Open(cfg Config) (*Guard, error) {
	cfg.defaults()
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("guard: udp port %d out of range", cfg.Port)
	}
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("guard: netlink: %w", unsupported(err))
	}
	g := &Guard{cfg: cfg, log: cfg.Logger, port: cfg.Port, conn: conn,
		table: &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}}
	g.s4 = &nftables.Set{Table: g.table, Name: set4, KeyType: nftables.TypeIPAddr}
	g.s6 = &nftables.Set{Table: g.table, Name: set6, KeyType: nftables.TypeIP6Addr}

	// Adding before deleting makes the delete succeed whether or not the table existed.
	conn.AddTable(g.table)
	conn.DelTable(g.table)
	conn.AddTable(g.table)
	if err := conn.AddSet(g.s4, nil); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("guard: set %s: %w", set4, err)
	}
	if err := conn.AddSet(g.s6, nil); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("guard: set %s: %w", set6, err)
	}
	accept := nftables.ChainPolicyAccept
	ch := conn.AddChain(&nftables.Chain{Name: chainName, Table: g.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	for _, r := range [][]expr.Any{
		allowRule(unix.NFPROTO_IPV4, g.port, 12, 4, g.s4),
		allowRule(unix.NFPROTO_IPV6, g.port, 8, 16, g.s6),
		append(udpDport(g.port), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}),
	} {
		conn.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: r})
	}
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("guard: create table inet %s: %w", cfg.Table, unsupported(err))
	}
	g.log.Info("fastdp guard ready: vxlan accepted from fastdp peers only", logx.KeyMode, "nftables table inet "+cfg.Table, logx.KeyPort, g.port)
	return g, nil
}

// unsupported marks the errors of a kernel without nf_tables as ErrUnsupported.
func unsupported(err error) error {
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return err
}

// udpDport matches UDP datagrams to port.
func udpDport(port int) []expr.Any {
	p := make([]byte, 2)
	binary.BigEndian.PutUint16(p, uint16(port))
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p},
	}
}

// allowRule accepts datagrams to port whose network-header source (at off, size n) is in s.
func allowRule(nfproto byte, port int, off, n uint32, s *nftables.Set) []expr.Any {
	r := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
	}
	r = append(r, udpDport(port)...)
	return append(r,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
		&expr.Verdict{Kind: expr.VerdictAccept},
	)
}

// Allow adds addr to (on) or removes it from the addresses whose datagrams reach the port;
// one transaction. Removing an address that is not there is not an error.
func (g *Guard) Allow(addr netip.Addr, on bool) error {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return fmt.Errorf("guard: allow: invalid address")
	}
	s := g.s4
	if addr.Is6() {
		s = g.s6
	}
	el := []nftables.SetElement{{Key: addr.AsSlice()}}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("guard: closed")
	}
	var err error
	if on {
		err = g.conn.SetAddElements(s, el)
	} else {
		err = g.conn.SetDeleteElements(s, el)
	}
	if err == nil {
		err = g.conn.Flush()
	}
	if err != nil && !on && errors.Is(err, unix.ENOENT) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("guard: allow %s=%v: %w", addr, on, err)
	}
	state := "blocked"
	if on {
		state = "allowed"
	}
	g.log.Debug("VXLAN source", logx.KeyAddr, addr, logx.KeyState, state)
	return nil
}

// Refused returns how many datagrams to the port were dropped since Open.
func (g *Guard) Refused() (uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, errors.New("guard: closed")
	}
	st, err := read(g.conn, g.table)
	return st.Refused, err
}

// Close releases the netlink socket; the table stays (see the package doc).
func (g *Guard) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	return g.conn.CloseLasting()
}

// Remove deletes the guard table (table: "" for DefaultTable) from the current network
// namespace; a missing table is not an error.
func Remove(table string) error {
	if table == "" {
		table = DefaultTable
	}
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("guard: netlink: %w", err)
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		if errors.Is(unsupported(err), ErrUnsupported) {
			return nil // no nf_tables: nothing of ours can be there
		}
		return fmt.Errorf("guard: remove table inet %s: %w", table, err)
	}
	return nil
}

// Read returns what the kernel holds for the guard table (table: "" for DefaultTable) in
// the current network namespace: for status, tests and debugging.
func Read(table string) (State, error) {
	if table == "" {
		table = DefaultTable
	}
	conn, err := nftables.New()
	if err != nil {
		return State{}, fmt.Errorf("guard: netlink: %w", err)
	}
	return read(conn, &nftables.Table{Name: table, Family: nftables.TableFamilyINet})
}

func read(conn *nftables.Conn, t *nftables.Table) (State, error) {
	var st State
	if _, err := conn.ListTableOfFamily(t.Name, t.Family); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return st, nil
		}
		return st, fmt.Errorf("guard: list table inet %s: %w", t.Name, err)
	}
	st.Present = true
	for _, name := range []string{set4, set6} {
		s, err := conn.GetSetByName(t, name)
		if err != nil {
			return st, fmt.Errorf("guard: set %s: %w", name, err)
		}
		els, err := conn.GetSetElements(s)
		if err != nil {
			return st, fmt.Errorf("guard: elements of %s: %w", name, err)
		}
		for _, e := range els {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				st.Allowed = append(st.Allowed, a)
			}
		}
	}
	rules, err := conn.GetRules(t, &nftables.Chain{Name: chainName, Table: t})
	if err != nil {
		return st, fmt.Errorf("guard: rules: %w", err)
	}
	for _, r := range rules {
		for i, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Counter:
				st.Refused += e.Packets
			case *expr.Cmp:
				// The port is the operand of the cmp after the transport-header load.
				if i > 0 && len(e.Data) == 2 {
					if p, ok := r.Exprs[i-1].(*expr.Payload); ok && p.Base == expr.PayloadBaseTransportHeader {
						st.Port = int(binary.BigEndian.Uint16(e.Data))
					}
				}
			}
		}
	}
	return st, nil
}
