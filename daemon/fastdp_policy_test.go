package daemon

import (
	"net/netip"
	"testing"

	"github.com/weavemesh/weave/fastdp"
)

// TestFastdpPolicy: the one decision point for a kernel path. A password mesh gets none
// (it would accept unauthenticated frames) unless trusted subnets let some pairs go without
// encryption; --no-fastdp gets none; a plaintext mesh gets one.
func TestFastdpPolicy(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.201.0.0/24")}
	for _, tc := range []struct {
		name string
		cfg  Config
		want fastdp.Reason // "" means allowed
	}{
		{"plaintext", Config{}, ""},
		{"password", Config{Password: []byte("s")}, fastdp.ReasonEncryption},
		{"password with trusted subnets", Config{Password: []byte("s"), TrustedSubnets: trusted}, ""},
		{"disabled", Config{NoFastDP: true}, fastdp.ReasonDisabled},
		{"disabled with password", Config{NoFastDP: true, Password: []byte("s")}, fastdp.ReasonDisabled},
	} {
		st := fastdpPolicy(tc.cfg)
		switch {
		case tc.want == "" && st != nil:
			t.Errorf("%s: kernel path refused: %+v", tc.name, *st)
		case tc.want != "" && st == nil:
			t.Errorf("%s: kernel path allowed, want refused with %s", tc.name, tc.want)
		case st != nil && (st.Reason != tc.want || st.Detail == "" || st.Active):
			t.Errorf("%s: status %+v, want reason %s with a detail", tc.name, *st, tc.want)
		}
	}
}
