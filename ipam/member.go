package ipam

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
)

// The membership record (Config.MemberPath) remembers, outside ipam.db, that this peer has
// belonged to a ring and who owned space in it. Losing ipam.db (deleted, emptied, or moved
// aside as the README's repair says) then cannot make the peer bootstrap a ring of its own
// next to the one its old partners still hold, which would hand out addresses that their
// containers use: it waits to adopt their ring instead.
//
//	# comment lines
//	range 10.32.0.0/12
//	owner aa:bb:cc:dd:ee:ff
const (
	memberRangeKey = "range"
	memberOwnerKey = "owner"
	// maxMemberFile bounds what we read: a ring has at most a few thousand owners.
	maxMemberFile = 1 << 20
)

// ErrBadMemberRecord is returned (wrapped) for a membership record that does not parse.
var ErrBadMemberRecord = errors.New("ipam: bad membership record")

// memberRecord is the parsed membership record.
type memberRecord struct {
	rng    netip.Prefix
	owners []mesh.PeerName // sorted, unique
}

// parseMemberRecord parses the record; it never trusts its input (the state dir may hold
// anything after a crash or a user's edit).
func parseMemberRecord(b []byte) (memberRecord, error) {
	var m memberRecord
	if len(b) > maxMemberFile {
		return m, fmt.Errorf("%w: %d bytes", ErrBadMemberRecord, len(b))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 256), maxMemberFile)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		v = strings.TrimSpace(v)
		switch {
		case !ok:
			return m, fmt.Errorf("%w: line %q", ErrBadMemberRecord, line)
		case k == memberRangeKey:
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() || m.rng.IsValid() {
				return m, fmt.Errorf("%w: range %q", ErrBadMemberRecord, v)
			}
			m.rng = p.Masked()
		case k == memberOwnerKey:
			p, err := mesh.ParsePeerName(v)
			if err != nil || p == mesh.UnknownPeerName {
				return m, fmt.Errorf("%w: owner %q", ErrBadMemberRecord, v)
			}
			m.owners = append(m.owners, p)
		default:
			return m, fmt.Errorf("%w: unknown key %q", ErrBadMemberRecord, k)
		}
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("%w: %w", ErrBadMemberRecord, err)
	}
	if !m.rng.IsValid() {
		return m, fmt.Errorf("%w: no range", ErrBadMemberRecord)
	}
	slices.Sort(m.owners)
	m.owners = slices.Compact(m.owners)
	return m, nil
}

func (m memberRecord) encode() []byte {
	var b strings.Builder
	b.WriteString("# weave IPAM: this peer has belonged to the ring below. While this file exists and\n")
	b.WriteString("# names other owners, a start without ipam.db waits to adopt their ring instead of\n")
	b.WriteString("# making a new one. Remove it only if every peer of that ring has lost its ipam.db.\n")
	fmt.Fprintf(&b, "%s %s\n", memberRangeKey, m.rng)
	for _, p := range m.owners {
		fmt.Fprintf(&b, "%s %s\n", memberOwnerKey, p)
	}
	return []byte(b.String())
}

// readMemberRecord returns the record at path; ok is false when there is none.
func readMemberRecord(path string) (m memberRecord, ok bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read ipam membership record: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxMemberFile+1)); err != nil {
		return m, true, fmt.Errorf("read ipam membership record %s: %w", path, err)
	}
	m, err = parseMemberRecord(buf.Bytes())
	if err != nil {
		return m, true, fmt.Errorf("ipam membership record %s: %w", path, err)
	}
	return m, true, nil
}

// writeMemberRecord replaces the record atomically and durably: it must be on disk before
// the ring it describes can be lost.
func writeMemberRecord(path string, m memberRecord) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write ipam membership record: %w", err)
	}
	_, werr := f.Write(m.encode())
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write ipam membership record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write ipam membership record: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// checkMembership decides, when the database has no ring, whether we belonged to one
// before: then the ring still exists at its other owners, and making a new one (consensus
// with a quorum of one, or a seed) would hand out their containers' addresses again.
func (a *Allocator) checkMembership() error {
	if a.cfg.MemberPath == "" || !a.ring.Empty() || a.adopting || a.cfg.mode == initObserver {
		return nil
	}
	m, exists, err := readMemberRecord(a.cfg.MemberPath)
	switch {
	case err != nil && exists:
		// Unreadable but there: we did belong to a ring. Waiting is safe; guessing is not.
		a.stats.badRecords.Add(1)
		a.log.Error("membership record unreadable; waiting for a peer's ring instead of making one", logx.KeyErr, err,
			logx.KeyReason, "to repair, remove "+a.cfg.MemberPath+" only if every peer of the old ring lost its ipam.db")
		a.adopting, a.rejoining = true, true
	case err != nil:
		return err
	case !exists:
	case m.rng != a.cfg.Range:
		a.log.Info("membership record is for another range; not rejoining it", logx.KeyCIDR, a.cfg.Range, logx.KeyReason, fmt.Sprintf("the record is for %v", m.rng))
	case slices.ContainsFunc(m.owners, func(p mesh.PeerName) bool { return p != a.cfg.Name }):
		a.log.Warn("no ring in the database but this peer belonged to one: waiting to adopt it from a peer",
			logx.KeyCount, len(m.owners), logx.KeyPath, a.cfg.MemberPath)
		a.adopting, a.rejoining = true, true
		a.member, a.memberSaved = m, true
	}
	return nil
}

// saveMembership keeps the membership record up to date with the ring's owners. It is
// written only when they change, and before the ring is committed.
func (a *Allocator) saveMembership() {
	if a.cfg.MemberPath == "" || a.ring.Empty() || a.cfg.mode == initObserver {
		return
	}
	m := memberRecord{rng: a.cfg.Range, owners: a.ring.Owners()}
	if a.memberSaved && a.member.rng == m.rng && slices.Equal(a.member.owners, m.owners) {
		return
	}
	if err := writeMemberRecord(a.cfg.MemberPath, m); err != nil {
		a.stats.persistErrors.Add(1)
		a.log.Error("saving the ipam membership record failed; will retry", logx.KeyErr, err)
		return
	}
	a.member, a.memberSaved = m, true
}
