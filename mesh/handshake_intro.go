package mesh

// The intro message of the handshake: its limits, its codec and the validation of what a
// peer says about itself. decodeIntro reads untrusted bytes (fuzzed by FuzzHandshakeIntro).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Limits on the intro message: enough for any real peer, small enough that an unauthenticated
// peer cannot make us hold much. A nickname is limited by maxNickLen, as in topology entries.
const (
	maxFeatures        = 32 // caller's features, not counting the reserved keys
	maxFeatureKeyLen   = 64
	maxFeatureValueLen = 1024
	maxIntroEntries    = maxFeatures + 4
	maxIntroSize       = 1 + maxIntroEntries*(1+maxFeatureKeyLen+2+maxFeatureValueLen)
)

// Reserved intro keys (Weave's feature names).
const (
	introName     = "Name"
	introNickName = "NickName"
	introUID      = "UID"
	introConnID   = "ConnID"
)

var reservedIntroKeys = []string{introName, introNickName, introUID, introConnID}

func isReservedIntroKey(k string) bool { return slices.Contains(reservedIntroKeys, k) }

func checkNickName(n string) error {
	if len(n) > maxNickLen {
		return fmt.Errorf("nickname of %d bytes, max %d", len(n), maxNickLen)
	}
	if !utf8.ValidString(n) {
		return errors.New("nickname is not UTF-8")
	}
	for _, r := range n {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("nickname %q has a non-printable character", n)
		}
	}
	return nil
}

func checkFeature(k, v string) error {
	if len(k) == 0 || len(k) > maxFeatureKeyLen {
		return fmt.Errorf("feature key %q: length %d not in [1,%d]", k, len(k), maxFeatureKeyLen)
	}
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] > '~' {
			return fmt.Errorf("feature key %q: not printable ASCII", k)
		}
	}
	if len(v) > maxFeatureValueLen {
		return fmt.Errorf("feature %q: value of %d bytes, max %d", k, len(v), maxFeatureValueLen)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("feature %q: value is not UTF-8", k)
	}
	return nil
}

// encodeIntro writes the intro message; p has been validated, so every length fits.
func encodeIntro(p *handshakeParams, connID uint64) []byte {
	entries := [][2]string{
		{introName, p.Name.String()},
		{introNickName, p.NickName},
		{introUID, strconv.FormatUint(p.UID, 10)},
		{introConnID, strconv.FormatUint(connID, 10)},
	}
	for k, v := range p.Features {
		entries = append(entries, [2]string{k, v})
	}
	b := []byte{byte(len(entries))}
	for _, e := range entries {
		b = append(b, byte(len(e[0])))
		b = append(b, e[0]...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(e[1])))
		b = append(b, e[1]...)
	}
	return b
}

// decodeIntro parses and validates a peer's intro message. ConnID is the peer's own value.
func decodeIntro(b []byte) (remoteIntro, error) {
	bad := func(format string, args ...any) (remoteIntro, error) {
		return remoteIntro{}, fmt.Errorf("%w: intro: %s", ErrBadHandshake, fmt.Sprintf(format, args...))
	}
	if len(b) > maxIntroSize {
		return bad("%d bytes, max %d", len(b), maxIntroSize)
	}
	if len(b) < 1 {
		return bad("empty")
	}
	n := int(b[0])
	if n > maxIntroEntries {
		return bad("%d entries, max %d", n, maxIntroEntries)
	}
	b = b[1:]
	all := make(map[string]string, n)
	for i := range n {
		if len(b) < 1 {
			return bad("entry %d: truncated", i)
		}
		kl := int(b[0])
		if len(b) < 1+kl+2 {
			return bad("entry %d: truncated", i)
		}
		k := string(b[1 : 1+kl])
		vl := int(binary.BigEndian.Uint16(b[1+kl:]))
		b = b[1+kl+2:]
		if len(b) < vl {
			return bad("entry %d: truncated", i)
		}
		v := string(b[:vl])
		b = b[vl:]
		if _, dup := all[k]; dup {
			return bad("duplicate key %q", k)
		}
		if !isReservedIntroKey(k) {
			if err := checkFeature(k, v); err != nil {
				return bad("%v", err)
			}
		}
		all[k] = v
	}
	if len(b) != 0 {
		return bad("%d trailing bytes", len(b))
	}

	var in remoteIntro
	for _, k := range reservedIntroKeys {
		if _, ok := all[k]; !ok {
			return bad("missing %s", k)
		}
	}
	name, err := ParsePeerName(all[introName])
	if err != nil {
		return bad("%v", err)
	}
	in.Name = name
	if err := checkNickName(all[introNickName]); err != nil {
		return bad("%v", err)
	}
	in.NickName = all[introNickName]
	if in.UID, err = strconv.ParseUint(all[introUID], 10, 64); err != nil || in.UID == 0 {
		return bad("bad UID %q", all[introUID])
	}
	if in.ConnID, err = strconv.ParseUint(all[introConnID], 10, 64); err != nil {
		return bad("bad ConnID %q", all[introConnID])
	}
	for _, k := range reservedIntroKeys {
		delete(all, k)
	}
	if len(all) > maxFeatures {
		return bad("%d features, max %d", len(all), maxFeatures)
	}
	in.Features = all
	return in, nil
}
