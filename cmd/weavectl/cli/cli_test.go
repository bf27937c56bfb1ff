package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
)

// fakeDaemon serves the control API on a unix socket with canned answers and records the
// requests it got.
type fakeDaemon struct {
	socket string
	report api.Report

	mu       sync.Mutex
	requests []string
	bodies   []api.PeersRequest
	stopped  bool
	srv      *http.Server
}

func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	retry := time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC)
	f := &fakeDaemon{
		socket: filepath.Join(t.TempDir(), "weave.sock"),
		report: api.Report{
			Version: "1.2.3", Ready: true,
			Router: api.Router{
				Name: "aa:00:00:00:00:01", NickName: "h1", Port: 6783, Encryption: true, Discovery: true,
				Peers: []api.Peer{
					{Name: "aa:00:00:00:00:01", NickName: "h1", Connections: []api.PeerConnection{
						{Name: "aa:00:00:00:00:02", Address: "10.0.0.2:6783", Outbound: true, Established: true}}},
					{Name: "aa:00:00:00:00:02", NickName: "h2", Connections: []api.PeerConnection{
						{Name: "aa:00:00:00:00:01", Address: "10.0.0.1:40000", Outbound: false, Established: true}}},
				},
				Connections: []api.Connection{
					{Peer: "aa:00:00:00:00:02", NickName: "h2", Address: "10.0.0.2:6783", Outbound: true,
						State: api.StateEstablished, Overlay: "sleeve", Encrypted: true, MTU: 1414},
					{Address: "10.0.0.9:6783", Outbound: true, State: api.StateFailed,
						Info: "dial tcp 10.0.0.9:6783: connection refused", NextRetry: &retry},
				},
				Targets: []string{"10.0.0.2", "10.0.0.9"},
			},
			Bridge: api.Bridge{Name: "weave", TAP: "vethwe-tap", MTU: 1414},
			IPAM: &api.IPAM{Status: "ready", Range: "10.32.0.0/12", DefaultSubnet: "10.32.0.0/12", ActiveIPs: 3,
				Owners: []api.IPAMOwner{
					{Peer: "aa:00:00:00:00:01", NickName: "h1", Addresses: 524288, Percent: 50, Reachable: true, Self: true},
					{Peer: "aa:00:00:00:00:03", NickName: "h3", Addresses: 524288, Percent: 50, Reachable: false},
				}},
		},
	}
	mux := http.NewServeMux()
	record := func(r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	}
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		json.NewEncoder(w).Encode(api.Status{Version: "1.2.3", Ready: true, Name: f.report.Router.Name, PID: 42})
	})
	mux.HandleFunc("GET "+api.PathReport, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		json.NewEncoder(w).Encode(f.report)
	})
	mux.HandleFunc("GET "+api.PathVersion, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		json.NewEncoder(w).Encode(api.VersionInfo{Version: "1.2.3", API: api.Version})
	})
	mux.HandleFunc("POST "+api.PathStop, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		f.mu.Lock()
		f.stopped = true
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		go f.srv.Shutdown(context.Background()) // graceful, like the daemon: the reply goes out first
	})
	peers := func(w http.ResponseWriter, r *http.Request) {
		record(r)
		var req api.PeersRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			w.WriteHeader(400)
			return
		}
		if slices.Contains(req.Peers, "bad:peer:addr") {
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(api.Errorf(api.CodeBadRequest, "bad peer address %q", "bad:peer:addr"))
			return
		}
		f.mu.Lock()
		f.bodies = append(f.bodies, req)
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}
	mux.HandleFunc("POST "+api.PathAttach, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		var req api.AttachRequest
		json.NewDecoder(r.Body).Decode(&req)
		if req.Target == "missing" {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.Errorf(api.CodeNotFound, "no network namespace %q", req.Target))
			return
		}
		cidrs := req.CIDRs
		if len(cidrs) == 0 {
			cidrs = []string{"10.32.0.7/12"}
		}
		json.NewEncoder(w).Encode(api.Endpoint{ID: req.Target, MAC: "02:00:00:00:00:07", CIDRs: cidrs})
	})
	mux.HandleFunc("POST "+api.PathDetach, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		var req api.DetachRequest
		json.NewDecoder(r.Body).Decode(&req)
		json.NewEncoder(w).Encode(api.Endpoint{ID: req.Target, CIDRs: []string{"10.32.0.7/12"}})
	})
	expose := func(w http.ResponseWriter, r *http.Request) {
		record(r)
		var req api.ExposeRequest
		json.NewDecoder(r.Body).Decode(&req)
		cidrs := req.CIDRs
		if len(cidrs) == 0 {
			cidrs = []string{"10.32.0.1/12"}
		}
		json.NewEncoder(w).Encode(api.Endpoint{ID: api.ExposeID, CIDRs: cidrs})
	}
	mux.HandleFunc("POST "+api.PathExpose, expose)
	mux.HandleFunc("POST "+api.PathHide, expose)
	mux.HandleFunc("GET "+api.PathEndpoints, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		json.NewEncoder(w).Encode([]api.Endpoint{
			{ID: "c1", MAC: "02:00:00:00:00:07", CIDRs: []string{"10.32.0.7/12"}},
			{ID: api.ExposeID, MAC: "aa:00:00:00:00:01", CIDRs: []string{"10.32.0.1/12", "10.33.0.1/12"}},
		})
	})
	mux.HandleFunc("POST "+api.PathRmpeer, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		var req api.RmpeerRequest
		json.NewDecoder(r.Body).Decode(&req)
		if req.Peer != "h3" {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.Errorf(api.CodeNotFound, "ipam: no such peer in the ring: %q", req.Peer))
			return
		}
		json.NewEncoder(w).Encode(api.RmpeerResponse{Peer: "aa:00:00:00:00:03", Taken: 4096})
	})
	mux.HandleFunc("POST "+api.PathReset, func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.WriteHeader(http.StatusNoContent)
		go f.srv.Shutdown(context.Background()) // graceful, like the daemon: the reply goes out first
	})
	mux.HandleFunc("POST "+api.PathConnect, peers)
	mux.HandleFunc("POST "+api.PathForget, peers)
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = &http.Server{Handler: mux}
	go f.srv.Serve(ln)
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func runCLI(t *testing.T, socket string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLIEnv(t, socket, nil, args...)
}

func runCLIEnv(t *testing.T, socket string, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return vars[k] },
		Executable: func() (string, error) { return "", errors.New("none") }}
	code = Run(append([]string{"--socket", socket}, args...), env)
	return code, out.String(), errb.String()
}

func TestStatusSummary(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errs := runCLI(t, f.socket, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"Name: aa:00:00:00:00:01(h1)", "Encryption: enabled", "Connections: 2 (1 established)",
		"Peers: 2 (with 2 established connections)", "Targets: 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusConnectionsPeersTargets(t *testing.T) {
	f := newFakeDaemon(t)
	_, out, _ := runCLI(t, f.socket, "status", "connections")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 connection lines, got:\n%s", out)
	}
	if !strings.HasPrefix(lines[0], "-> 10.0.0.2:6783") || !strings.Contains(lines[0], "established") ||
		!strings.Contains(lines[0], "sleeve aa:00:00:00:00:02(h2) encrypted mtu=1414") {
		t.Errorf("established line: %q", lines[0])
	}
	if !strings.Contains(lines[1], "failed") || !strings.Contains(lines[1], "connection refused") ||
		!strings.Contains(lines[1], "retry: 2026-11-26T13:00:00Z") {
		t.Errorf("failed line: %q", lines[1])
	}
	_, out, _ = runCLI(t, f.socket, "status", "peers")
	if !strings.Contains(out, "aa:00:00:00:00:01(h1)\n   -> 10.0.0.2:6783") || !strings.Contains(out, "aa:00:00:00:00:02(h2)") {
		t.Errorf("peers:\n%s", out)
	}
	_, out, _ = runCLI(t, f.socket, "status", "targets")
	if out != "10.0.0.2\n10.0.0.9\n" {
		t.Errorf("targets: %q", out)
	}
}

func TestStatusJSONAndReport(t *testing.T) {
	f := newFakeDaemon(t)
	for _, args := range [][]string{{"status", "--json"}, {"report"}} {
		code, out, _ := runCLI(t, f.socket, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d", args, code)
		}
		var r api.Report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%v: not JSON: %v", args, err)
		}
		if r.Router.Name != f.report.Router.Name || len(r.Router.Connections) != 2 || !r.Ready {
			t.Errorf("%v: report round trip lost data: %+v", args, r.Router)
		}
		for _, key := range []string{`"nickname"`, `"connections"`, `"established"`, `"outbound"`, `"encryption"`} {
			if !strings.Contains(out, key) {
				t.Errorf("%v: JSON lacks %s", args, key)
			}
		}
	}
	code, out, _ := runCLI(t, f.socket, "status", "connections", "--json")
	var conns []api.Connection
	if code != 0 || json.Unmarshal([]byte(out), &conns) != nil || len(conns) != 2 {
		t.Errorf("status connections --json: exit %d, %q", code, out)
	}
}

func TestConnectForget(t *testing.T) {
	f := newFakeDaemon(t)
	if code, _, errs := runCLI(t, f.socket, "connect", "--replace", "10.0.0.3", "10.0.0.4:7000"); code != 0 {
		t.Fatalf("connect: exit %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, f.socket, "forget", "10.0.0.3"); code != 0 {
		t.Fatalf("forget: exit %d %s", code, errs)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.bodies) != 2 || !f.bodies[0].Replace || len(f.bodies[0].Peers) != 2 || f.bodies[1].Peers[0] != "10.0.0.3" {
		t.Fatalf("bodies: %+v", f.bodies)
	}
}

func TestErrorsAreOneLineWithNonZeroExit(t *testing.T) {
	f := newFakeDaemon(t)
	code, _, errs := runCLI(t, f.socket, "connect", "bad:peer:addr")
	if code != 1 || !strings.Contains(errs, `bad peer address "bad:peer:addr"`) || strings.Count(errs, "\n") != 1 {
		t.Errorf("API error: exit %d, stderr %q", code, errs)
	}
	code, _, errs = runCLI(t, f.socket, "frobnicate")
	if code != 2 || !strings.Contains(errs, "unknown command") {
		t.Errorf("unknown command: exit %d, %q", code, errs)
	}
	code, _, errs = runCLI(t, f.socket, "status", "bogus")
	if code != 2 || !strings.Contains(errs, "unknown section") {
		t.Errorf("bad section: exit %d, %q", code, errs)
	}
	code, _, errs = runCLI(t, f.socket, "connect")
	if code != 2 {
		t.Errorf("connect without peers: exit %d, %q", code, errs)
	}
	missing := filepath.Join(t.TempDir(), "nothing.sock")
	code, _, errs = runCLI(t, missing, "status")
	if code != 1 || !strings.Contains(errs, "weaver is not running") || !strings.Contains(errs, missing) {
		t.Errorf("not running: exit %d, %q", code, errs)
	}
}

// There is no name service (weaveDNS has no successor yet): the CLI must not offer one.
func TestStatusOffersNoDNSSection(t *testing.T) {
	f := newFakeDaemon(t)
	code, _, errs := runCLI(t, f.socket, "status", "dns")
	if code != 2 || !strings.Contains(errs, `unknown section "dns"`) {
		t.Errorf("status dns: exit %d, %q", code, errs)
	}
	_, out, errs := runCLI(t, f.socket, "help")
	if strings.Contains(out+errs, "dns") {
		t.Errorf("usage mentions dns:\n%s%s", out, errs)
	}
}

func TestLaunchRefusesWhenRunning(t *testing.T) {
	f := newFakeDaemon(t)
	code, _, errs := runCLI(t, f.socket, "launch")
	if code != 1 || !strings.Contains(errs, "already running") {
		t.Errorf("exit %d, %q", code, errs)
	}
}

func TestVersionAndStop(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, _ := runCLI(t, f.socket, "version")
	if code != 0 || !strings.Contains(out, "weavectl ") || !strings.Contains(out, "weaver   1.2.3 (API v1)") {
		t.Errorf("version: exit %d %q", code, out)
	}
	code, out, errs := runCLI(t, f.socket, "stop")
	if code != 0 || !strings.Contains(out, "stopped") {
		t.Errorf("stop: exit %d %q %q", code, out, errs)
	}
	code, out, _ = runCLI(t, f.socket, "version")
	if code != 0 || !strings.Contains(out, "not running") {
		t.Errorf("version after stop: exit %d %q", code, out)
	}
}

func TestExtractPassword(t *testing.T) {
	rest, pw, err := extractPassword([]string{"--port", "1", "--password", "x y", "peer"})
	if err != nil || pw != "x y" || strings.Join(rest, ",") != "--port,1,peer" {
		t.Fatalf("%v %q %v", rest, pw, err)
	}
	_, pw, _ = extractPassword([]string{"--password=abc"})
	if pw != "abc" {
		t.Fatalf("%q", pw)
	}
	if _, _, err := extractPassword([]string{"--password"}); err == nil {
		t.Fatal("missing value accepted")
	}
}

func TestAttachDetachExposeHidePs(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"attach", "c1"}, "10.32.0.7/12\n"},
		{[]string{"attach", "10.2.0.1/24", "10.3.0.1/24", "c1"}, "10.2.0.1/24\n10.3.0.1/24\n"},
		{[]string{"detach", "c1"}, "10.32.0.7/12\n"},
		{[]string{"expose"}, "10.32.0.1/12\n"},
		{[]string{"expose", "10.32.9.9/12"}, "10.32.9.9/12\n"},
		{[]string{"hide"}, "10.32.0.1/12\n"},
		{[]string{"ps"}, "c1 02:00:00:00:00:07 10.32.0.7/12\nweave:expose aa:00:00:00:00:01 10.32.0.1/12 10.33.0.1/12\n"},
	} {
		code, out, errs := runCLI(t, f.socket, tc.args...)
		if code != 0 || out != tc.out {
			t.Errorf("%v: exit %d, out %q (want %q), err %q", tc.args, code, out, tc.out, errs)
		}
	}
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"attach"}, 2, "no TARGET"},
		{[]string{"attach", "10.0.0.1/33", "c1"}, 2, "bad CIDR"},
		{[]string{"attach", "c1", "c2"}, 2, "unexpected argument"},
		{[]string{"attach", "missing"}, 1, `no network namespace "missing"`},
		{[]string{"expose", "c1"}, 2, "unexpected argument"},
		{[]string{"ps", "x"}, 2, "no arguments"},
	} {
		code, _, errs := runCLI(t, f.socket, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.err) {
			t.Errorf("%v: exit %d (want %d), stderr %q (want %q)", tc.args, code, tc.code, errs, tc.err)
		}
	}
}

func TestRmpeerAndStatusIPAM(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, _ := runCLI(t, f.socket, "rmpeer", "h3")
	if code != 0 || out != "4096 IPs taken over from aa:00:00:00:00:03\n" {
		t.Errorf("rmpeer: exit %d %q", code, out)
	}
	code, _, errs := runCLI(t, f.socket, "rmpeer", "nobody")
	if code != 1 || !strings.Contains(errs, "no such peer") {
		t.Errorf("rmpeer nobody: exit %d %q", code, errs)
	}
	if code, _, _ := runCLI(t, f.socket, "rmpeer"); code != 2 {
		t.Errorf("rmpeer without a name: exit %d", code)
	}
	code, out, _ = runCLI(t, f.socket, "status", "ipam")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !strings.Contains(lines[0], "aa:00:00:00:00:01(h1)") || !strings.Contains(lines[0], "524288 IPs (50.0% of total) - 3 used") ||
		!strings.Contains(lines[1], "(h3)") || !strings.HasSuffix(lines[1], "unreachable!") {
		t.Errorf("status ipam: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, f.socket, "status", "ipam", "--json")
	var ip api.IPAM
	if code != 0 || json.Unmarshal([]byte(out), &ip) != nil || len(ip.Owners) != 2 {
		t.Errorf("status ipam --json: exit %d %q", code, out)
	}
	code, out, _ = runCLI(t, f.socket, "status")
	if code != 0 || !strings.Contains(out, "Service: ipam") || !strings.Contains(out, "Range: 10.32.0.0/12") {
		t.Errorf("status summary lacks ipam:\n%s", out)
	}
}

func TestResetStopsTheDaemonThenCleansUp(t *testing.T) {
	f := newFakeDaemon(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "reset-args")
	weaver := filepath.Join(dir, "weaver")
	script := "#!/bin/sh\necho \"$@\" > " + marker + "\n"
	if err := os.WriteFile(weaver, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLIEnv(t, f.socket, map[string]string{"WEAVER_BIN": weaver}, "reset")
	if code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("reset: exit %d %q %q", code, out, errs)
	}
	b, err := os.ReadFile(marker)
	if err != nil || !strings.HasPrefix(string(b), "--reset --state-dir ") {
		t.Errorf("weaver --reset not run: %q %v", b, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.requests, "POST "+api.PathReset) {
		t.Errorf("reset not asked of the daemon: %v", f.requests)
	}
	// A failing weaver --reset is reported with its message.
	os.WriteFile(weaver, []byte("#!/bin/sh\necho 'weaver: reset: permission denied' >&2\nexit 1\n"), 0o755)
	missing := filepath.Join(dir, "none.sock")
	code, _, errs = runCLIEnv(t, missing, map[string]string{"WEAVER_BIN": weaver}, "reset")
	if code != 1 || !strings.Contains(errs, "permission denied") {
		t.Errorf("failing reset: exit %d %q", code, errs)
	}
}
