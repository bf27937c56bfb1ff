package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
	"github.com/weavemesh/weave/internal/testutil"
)

// serveAPI serves d's API on a unix socket as the daemon does, and returns an HTTP client
// for raw requests and the API client.
func serveAPI(t *testing.T, d *Daemon) (*http.Client, *client.Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "weave.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d.apiHandler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", sock)
	}}, Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	cl := client.New(sock)
	t.Cleanup(cl.Close)
	return hc, cl
}

// TestAPIHostileBodiesRefusedAndCounted sends what a buggy or hostile local client might:
// over-limit bodies (valid JSON, garbage, a valid object padded past the limit), malformed
// JSON, unknown fields, trailing data. Each is refused with a clear error and counted, no
// state changes, and the daemon goes on answering.
func TestAPIHostileBodiesRefusedAndCounted(t *testing.T) {
	d := newTestDaemon(t)
	hc, cl := serveAPI(t, d)
	huge := `{"peers":["` + strings.Repeat("a", api.MaxRequestBody) + `"]}`
	for _, tc := range []struct {
		name, body string
		status     int
		code       api.ErrorCode
		msg        string
		reason     string
	}{
		{"over the limit, valid JSON", huge, 413, api.CodeTooLarge, "too large", "too_large"},
		{"over the limit, garbage", strings.Repeat("\x00\xff", api.MaxRequestBody), 400, api.CodeBadRequest, "malformed JSON", "malformed"},
		{"valid object padded past the limit", `{"peers":["h:1"]}` + strings.Repeat(" ", api.MaxRequestBody), 413, api.CodeTooLarge, "too large", "too_large"},
		{"malformed JSON", `{"peers":["h:1"`, 400, api.CodeBadRequest, "malformed JSON", "malformed"},
		{"not JSON", `peers=h:1`, 400, api.CodeBadRequest, "malformed JSON", "malformed"},
		{"wrong type", `{"peers":"h:1"}`, 400, api.CodeBadRequest, "malformed JSON", "malformed"},
		{"empty body", ``, 400, api.CodeBadRequest, "empty", "malformed"},
		{"unknown field", `{"peers":["h:1"],"pwned":true}`, 400, api.CodeBadRequest, `unknown field "pwned"`, "unknown_field"},
		{"trailing data", `{"peers":["h:1"]} {"peers":["h:2"]}`, 400, api.CodeBadRequest, "trailing data", "trailing_data"},
		{"invalid value", `{"peers":["a b"]}`, 400, api.CodeBadRequest, "bad peer address", "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := d.apiRefused.snapshot()
			resp, err := hc.Post("http://weave"+api.PathConnect, "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatalf("POST: %v", err)
			}
			var e api.Error
			derr := json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			if derr != nil || resp.StatusCode != tc.status || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
				t.Errorf("answer %d %+v (%v), want %d code %d with %q", resp.StatusCode, e, derr, tc.status, tc.code, tc.msg)
			}
			if strings.Contains(e.Message, "unexpected EOF") {
				t.Errorf("message %q blames EOF", e.Message)
			}
			after := d.apiRefused.snapshot()
			for r, n := range after {
				want := before[r]
				if r == tc.reason {
					want++
				}
				if n != want {
					t.Errorf("refusals[%s] = %d, want %d", r, n, want)
				}
			}
			// Nothing was applied, and the daemon still answers.
			if tg := d.mesh.Status().Targets; len(tg) != 0 {
				t.Errorf("targets changed to %v", tg)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if st, err := cl.Status(ctx); err != nil || !st.Ready {
				t.Fatalf("daemon after the request: %+v %v", st, err)
			}
		})
	}
	// A valid request still works after all that.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Connect(ctx, []string{"10.0.0.2:6783"}, false); err != nil {
		t.Fatalf("valid connect after hostile ones: %v", err)
	}
}

// TestClientRefusesOversizeRequest: the client says "too large" itself rather than
// sending megabytes the daemon would refuse.
func TestClientRefusesOversizeRequest(t *testing.T) {
	d := newTestDaemon(t)
	_, cl := serveAPI(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := cl.Connect(ctx, []string{strings.Repeat("a", api.MaxRequestBody)}, false)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeTooLarge || !strings.Contains(ae.Message, "too large") {
		t.Fatalf("got %v, want a too-large error", err)
	}
	if n := d.apiRefused.tooLarge.Load(); n != 0 {
		t.Errorf("the daemon saw %d oversize requests; the client should not have sent it", n)
	}
}

// TestDetachAddressTheTargetNeverHad: detaching an address the target does not have is a
// not-found error naming what it has, and changes nothing (before, it answered 200 and
// echoed the address as if it had been removed).
func TestDetachAddressTheTargetNeverHad(t *testing.T) {
	d := newTestDaemon(t)
	d.ipam.Prime()
	h := d.apiHandler()
	// A real network namespace handle (the test's own); the fake links do the rest.
	target := selfNetns
	attach := fmt.Sprintf(`{"target":%q,"cidrs":["10.32.0.5/12"]}`, target)
	testutil.Eventually(t, 10*time.Second, "attach claims its address", func() error {
		if status, body := call(t, h, "POST", api.PathAttach, attach); status != 200 {
			return fmt.Errorf("%d %s", status, body)
		}
		return nil
	})
	status, body := call(t, h, "POST", api.PathDetach, fmt.Sprintf(`{"target":%q,"cidrs":["10.32.0.9/12"]}`, target))
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || status != 404 || e.Code != api.CodeNotFound ||
		!strings.Contains(e.Message, "10.32.0.9/12 is not an address of") || !strings.Contains(e.Message, "10.32.0.5/12") {
		t.Fatalf("detach of a foreign address: %d %s", status, body)
	}
	eps := d.endpointList()
	if len(eps) != 1 || len(eps[0].CIDRs) != 1 || eps[0].CIDRs[0] != "10.32.0.5/12" {
		t.Errorf("endpoints after the refused detach: %+v", eps)
	}
	if !holds(d, "10.32.0.5") {
		t.Errorf("IPAM no longer holds 10.32.0.5: %+v", d.ipam.Owned())
	}
	// The address it has detaches, and is echoed.
	status, body = call(t, h, "POST", api.PathDetach, fmt.Sprintf(`{"target":%q,"cidrs":["10.32.0.5/12"]}`, target))
	var ep api.Endpoint
	if err := json.Unmarshal(body, &ep); err != nil || status != 200 || len(ep.CIDRs) != 1 || ep.CIDRs[0] != "10.32.0.5/12" {
		t.Fatalf("detach of its address: %d %s", status, body)
	}
	if holds(d, "10.32.0.5") {
		t.Errorf("IPAM still holds 10.32.0.5 after detach")
	}
}

func holds(d *Daemon, addr string) bool {
	for _, ps := range d.ipam.Owned() {
		for _, p := range ps {
			if p.Addr().String() == addr {
				return true
			}
		}
	}
	return false
}

// TestIPAMReleaseSaysHowMany: the release answer carries the count, 0 included (before, 0
// was left out of the JSON, so "nothing was held" and "no count" looked the same).
func TestIPAMReleaseSaysHowMany(t *testing.T) {
	d := newTestDaemon(t)
	d.ipam.Prime()
	h := d.apiHandler()
	testutil.Eventually(t, 10*time.Second, "allocate", func() error {
		if status, body := call(t, h, "POST", api.PathIPAMAllocate, `{"id":"c1","iface":"eth0"}`); status != 200 {
			return fmt.Errorf("%d %s", status, body)
		}
		return nil
	})
	for i, want := range []int{1, 0} {
		status, body := call(t, h, "POST", api.PathIPAMRelease, `{"id":"c1","iface":"eth0"}`)
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(body, &raw); err != nil || status != 200 {
			t.Fatalf("release #%d: %d %s", i+1, status, body)
		}
		n, ok := raw["released"]
		if !ok || string(n) != fmt.Sprint(want) {
			t.Errorf("release #%d answered %s, want \"released\": %d", i+1, body, want)
		}
	}
}
