package mesh

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Identity files in the state dir.
const (
	peerNameFile = "peer-name"
	targetsFile  = "targets"
)

// machineIDPaths are read in order; the first non-empty one seeds the derived name.
var machineIDPaths = [...]string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

// LoadOrCreateName returns the peer name to run with. A non-empty override wins (and is
// persisted, so a later start without it keeps the same identity). Otherwise the name stored
// in stateDir/peer-name is used; on first start a name is derived from the machine-id mixed
// with a random salt and persisted. The salt is what keeps cloned VMs (same machine-id, same
// DMI UUID: Weave's #2427/#3438) from sharing a name, while the file keeps the name stable
// across restarts.
func LoadOrCreateName(stateDir string, override string) (PeerName, error) {
	return loadOrCreateName(stateDir, override, readMachineID)
}

func loadOrCreateName(stateDir, override string, machineID func() []byte) (PeerName, error) {
	path := filepath.Join(stateDir, peerNameFile)
	if override != "" {
		name, err := ParsePeerName(override)
		if err != nil {
			return 0, fmt.Errorf("peer name override: %w", err)
		}
		if stateDir != "" {
			if err := writeFileAtomic(path, []byte(name.String()+"\n")); err != nil {
				return 0, fmt.Errorf("persist peer name: %w", err)
			}
		}
		return name, nil
	}
	if stateDir != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			name, perr := ParsePeerName(strings.TrimSpace(string(b)))
			if perr != nil {
				return 0, fmt.Errorf("peer name file %s: %w", path, perr)
			}
			return name, nil
		case !errors.Is(err, fs.ErrNotExist):
			return 0, fmt.Errorf("read peer name: %w", err)
		}
	}
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return 0, fmt.Errorf("peer name salt: %w", err)
	}
	name := deriveName(machineID(), salt[:])
	if stateDir != "" {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return 0, fmt.Errorf("create state dir: %w", err)
		}
		if err := writeFileAtomic(path, []byte(name.String()+"\n")); err != nil {
			return 0, fmt.Errorf("persist peer name: %w", err)
		}
	}
	return name, nil
}

// deriveName hashes machine-id and salt into 48 bits shaped like a locally administered
// unicast MAC (as Weave did), so names also work where a MAC is expected.
func deriveName(machineID, salt []byte) PeerName {
	h := sha256.New()
	h.Write([]byte("weavemesh peer name v1\x00"))
	h.Write(machineID)
	h.Write([]byte{0})
	h.Write(salt)
	sum := h.Sum(nil)
	sum[0] = (sum[0] &^ 0x01) | 0x02
	n := PeerNameFromBytes(sum[:6])
	if n == UnknownPeerName {
		n = 0x020000000001
	}
	return n
}

func readMachineID() []byte {
	for _, p := range machineIDPaths {
		if b, err := os.ReadFile(p); err == nil {
			if s := strings.TrimSpace(string(b)); s != "" {
				return []byte(s)
			}
		}
	}
	return nil
}

// newUID returns a random non-zero incarnation number for this process start.
func newUID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(fmt.Sprintf("crypto/rand failed: %v", err)) // the OS has no entropy: nothing works
		}
		if v := binary.BigEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp-" + hex.EncodeToString(randBytes(4))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
