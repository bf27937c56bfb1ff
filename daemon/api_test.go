package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netdev"
	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/tap"
	"github.com/weavemesh/weave/tap/taptest"
	"github.com/weavemesh/weave/udp"
	"github.com/weavemesh/weave/udp/udptest"
)

// newTestDaemon starts a daemon through New and Start over the fakes at the OS boundary
// (Env: an in-memory mesh transport, UDP and TAP; netdev.Fake; no kernel path): the API
// handlers run as in production, without root. tests/e2e runs several such daemons.
var testDaemons atomic.Int32

func newTestDaemon(t testing.TB) *Daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "weave-daemon-") // t.TempDir may be too long for a socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := DefaultConfig()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Socket = filepath.Join(dir, "s.sock")
	cfg.MetricsAddr = ""
	cfg.Logger = logx.Discard()
	cfg.Links = netdev.NewFake()
	cfg.NickName = "test"
	cfg.Name = mesh.PeerName(0x0200000000aa).String()
	cfg.NoFastDP = true
	// The bridge-ownership lock is real (an abstract socket in this network namespace): a
	// name per test daemon keeps parallel tests and test binaries apart.
	cfg.Bridge = fmt.Sprintf("wd%d-%d", os.Getpid(), testDaemons.Add(1))
	cfg.Env = Env{
		OpenTAP: func(c tap.Config) (tap.Device, error) { return taptest.New(taptest.Config{Name: c.Name}), nil },
		ListenUDP: func(c udp.Config) (udp.Bind, error) {
			return udptest.NewNetwork(1).NewBind(netip.MustParseAddrPort("10.0.0.1:6783"))
		},
		// No nftables table or device cleanup in the test machine's own namespace.
		Guard:             func(int) (Guard, error) { return fastdp.NewFakeFilter(), nil },
		RemoveKernelPaths: func() error { return nil },
		MeshTransport:     mesh.NewMemNetwork().Transport("10.0.0.1"),
		MeshListenAddr:    "10.0.0.1:6783",
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		d.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func call(t testing.TB, h http.Handler, method, path, body string) (int, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code, w.Body.Bytes()
}

func TestAPIRefusesBadRequestsWithStableCodes(t *testing.T) {
	d := newTestDaemon(t)
	h := d.apiHandler()
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               api.ErrorCode
		msg                string
	}{
		{"GET", "/v1/nothing", "", 404, api.CodeNotFound, "no such API path"},
		{"POST", api.PathConnect, `{"peers":["a"],"bogus":1}`, 400, api.CodeBadRequest, "unknown field"},
		{"POST", api.PathConnect, `{"peers":["a b"]}`, 400, api.CodeBadRequest, "bad peer address"},
		{"POST", api.PathConnect, `{"peers":["a"]} {}`, 400, api.CodeBadRequest, "trailing data"},
		{"POST", api.PathForget, `{"peers":[]}`, 400, api.CodeBadRequest, "no peers"},
		{"POST", api.PathAttach, `{"target":"../etc"}`, 400, api.CodeBadRequest, "bad target"},
		{"POST", api.PathAttach, `{"target":"/nonexistent/ns"}`, 404, api.CodeNotFound, "no network namespace"},
		{"POST", api.PathAttach, `{"target":"999999999"}`, 404, api.CodeNotFound, "no process"},
		{"POST", api.PathExpose, `{"cidrs":["10.32.0.0/12"]}`, 400, api.CodeBadRequest, "network or broadcast"},
		{"POST", api.PathExpose, `{"cidrs":["fd00::1/64"]}`, 400, api.CodeBadRequest, "only IPv4"},
		{"POST", api.PathHide, `{}`, 404, api.CodeNotFound, "not exposed"},
		{"POST", api.PathIPAMClaim, `{"id":"x","iface":"e"}`, 400, api.CodeBadRequest, "needs a cidr"},
		{"POST", api.PathIPAMAllocate, `{"id":"x","iface":"e","subnet":"nonsense"}`, 400, api.CodeBadRequest, "bad subnet"},
		{"POST", api.PathRmpeer, `{"peer":"nobody"}`, 404, api.CodeNotFound, "no such peer"},
	} {
		status, body := call(t, h, tc.method, tc.path, tc.body)
		var e api.Error
		if err := json.Unmarshal(body, &e); err != nil || status != tc.status || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
			t.Errorf("%s %s %s: %d %s, want %d code %d %q", tc.method, tc.path, tc.body, status, body, tc.status, tc.code, tc.msg)
		}
	}
}

func TestAPIExposeAllocatesOnceAndReportShowsIt(t *testing.T) {
	d := newTestDaemon(t)
	d.ipam.Prime()
	h := d.apiHandler()
	var first api.Endpoint
	// The one-peer ring forms asynchronously.
	testutil.Eventually(t, 10*time.Second, "expose allocates", func() error {
		status, body := call(t, h, "POST", api.PathExpose, `{}`)
		if status != 200 {
			return fmt.Errorf("%d %s", status, body)
		}
		return json.Unmarshal(body, &first)
	})
	if len(first.CIDRs) != 1 || !netip.MustParsePrefix("10.32.0.0/12").Contains(netip.MustParsePrefix(first.CIDRs[0]).Addr()) {
		t.Fatalf("expose gave %+v", first)
	}
	_, body := call(t, h, "POST", api.PathExpose, `{}`)
	var again api.Endpoint
	json.Unmarshal(body, &again)
	if again.CIDRs[0] != first.CIDRs[0] {
		t.Errorf("second expose allocated again: %v then %v", first.CIDRs, again.CIDRs)
	}
	if l, _ := d.links.(*netdev.Fake).Link(d.cfg.Bridge); len(l.Addrs) != 1 {
		t.Errorf("bridge addresses %v", l.Addrs)
	}
	_, body = call(t, h, "GET", api.PathReport, "")
	var rep api.Report
	if err := json.Unmarshal(body, &rep); err != nil || rep.IPAM == nil || rep.IPAM.ActiveIPs != 1 || len(rep.Endpoints) != 1 || rep.Endpoints[0].ID != api.ExposeID {
		t.Errorf("report: %v %+v", err, rep)
	}
}

// TestAPIHideAddressTheHostNeverHad: hide of an address the host was not given is refused
// with what it has, and changes nothing; its own address hides.
func TestAPIHideAddressTheHostNeverHad(t *testing.T) {
	d := newTestDaemon(t)
	d.ipam.Prime()
	h := d.apiHandler()
	testutil.Eventually(t, 10*time.Second, "expose claims its address", func() error {
		if status, body := call(t, h, "POST", api.PathExpose, `{"cidrs":["10.32.0.7/12"]}`); status != 200 {
			return fmt.Errorf("%d %s", status, body)
		}
		return nil
	})
	status, body := call(t, h, "POST", api.PathHide, `{"cidrs":["10.32.0.8/12"]}`)
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || status != 404 || e.Code != api.CodeNotFound ||
		!strings.Contains(e.Message, "10.32.0.8/12 is not an address of the host") || !strings.Contains(e.Message, "10.32.0.7/12") {
		t.Fatalf("hide of a foreign address: %d %s", status, body)
	}
	if l, _ := d.links.(*netdev.Fake).Link(d.cfg.Bridge); len(l.Addrs) != 1 {
		t.Errorf("bridge addresses after the refused hide: %v", l.Addrs)
	}
	if status, body := call(t, h, "POST", api.PathHide, `{"cidrs":["10.32.0.7/12"]}`); status != 200 || !strings.Contains(string(body), "10.32.0.7/12") {
		t.Fatalf("hide of its address: %d %s", status, body)
	}
}

// FuzzAPI feeds arbitrary requests to every handler: nothing panics, and every refusal is a
// well-formed error with a stable code.
func FuzzAPI(f *testing.F) {
	for _, p := range []string{api.PathConnect, api.PathForget, api.PathAttach, api.PathDetach, api.PathExpose,
		api.PathHide, api.PathRmpeer, api.PathIPAMAllocate, api.PathIPAMClaim, api.PathIPAMRelease} {
		f.Add(p, `{}`)
		f.Add(p, `{"peers":["x:1"],"cidrs":["10.32.1.1/12"],"target":"x","id":"a","iface":"b","cidr":"10.32.1.1/12"}`)
	}
	f.Add(api.PathAttach, `{"target":"1","cidrs":["1.2.3.4/0"]}`)
	f.Add("/v1/../v1/report", "")
	d := newTestDaemon(f)
	h := d.apiHandler()
	f.Fuzz(func(t *testing.T, path, body string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t?#") || strings.Contains(path, "stop") || strings.Contains(path, "reset") {
			return // not a request line an HTTP client can send; stop/reset end the daemon
		}
		if _, err := url.ParseRequestURI(path); err != nil {
			return // the HTTP server refuses it before any handler runs
		}
		for _, method := range []string{"GET", "POST"} {
			req := httptest.NewRequest(method, path, bytes.NewReader([]byte(body)))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code/100 == 2 {
				continue
			}
			if w.Code/100 == 3 {
				continue // the mux cleans paths with a redirect
			}
			var e api.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code == 0 || e.Message == "" {
				t.Fatalf("%s %q %q: %d with body %q", method, path, body, w.Code, w.Body.Bytes())
			}
		}
	})
}
