package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

func TestParseIperf(t *testing.T) {
	good := `{"start":{"test_start":{"num_streams":1}},"end":{"sum_sent":{"bits_per_second":9.5e9,"retransmits":12},
		"sum_received":{"bits_per_second":9.4e9,"bytes":11750000000},"cpu_utilization_percent":{"host_total":40.5,"remote_total":60.25}}}`
	r, err := parseIperf([]byte(good), 1)
	if err != nil {
		t.Fatal(err)
	}
	if r.bps != 9.4e9 || r.bytes != 11.75e9 || r.retransmits != 12 || r.senderCPU != 40.5 || r.receiverCPU != 60.25 {
		t.Fatalf("parseIperf = %+v", r)
	}
	for name, out := range map[string]string{
		"iperf error":   `{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`,
		"no throughput": `{"start":{"test_start":{"num_streams":1}},"end":{"sum_received":{"bits_per_second":0,"bytes":5}}}`,
		"no payload":    `{"start":{"test_start":{"num_streams":1}},"end":{"sum_received":{"bits_per_second":1e9}}}`,
		"not json":      "iperf3: error - unable to connect",
	} {
		if _, err := parseIperf([]byte(out), 1); err == nil {
			t.Errorf("%s: accepted %q", name, out)
		}
	}
	if _, err := parseIperf([]byte(`{"error":"unable to connect to server"}`), 1); err == nil || !strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("iperf3's own error not passed on: %v", err)
	}
}

// With -P the summary is the sum over the streams (the shape of iperf3 3.12's -J -P 4,
// trimmed), and a run of another number of streams than asked for is refused.
func TestParseIperfParallel(t *testing.T) {
	out := `{"start":{"test_start":{"protocol":"TCP","num_streams":4,"duration":2}},
	"intervals":[{"streams":[{"socket":5,"bytes":1},{"socket":7,"bytes":2}],"sum":{"bytes":3}}],
	"end":{"streams":[
		{"sender":{"socket":5,"bytes":1000000000,"bits_per_second":4e9,"retransmits":1},"receiver":{"socket":5,"bytes":990000000,"bits_per_second":3.96e9}},
		{"sender":{"socket":7,"bytes":1000000000,"bits_per_second":4e9,"retransmits":2},"receiver":{"socket":7,"bytes":1000000000,"bits_per_second":4e9}},
		{"sender":{"socket":9,"bytes":1000000000,"bits_per_second":4e9,"retransmits":3},"receiver":{"socket":9,"bytes":1000000000,"bits_per_second":4e9}},
		{"sender":{"socket":11,"bytes":1000000000,"bits_per_second":4e9,"retransmits":4},"receiver":{"socket":11,"bytes":1010000000,"bits_per_second":4.04e9}}],
	"sum_sent":{"bytes":4000000000,"bits_per_second":16e9,"retransmits":10},
	"sum_received":{"bytes":4000000000,"bits_per_second":16e9},
	"cpu_utilization_percent":{"host_total":90,"remote_total":70}}}`
	r, err := parseIperf([]byte(out), 4)
	if err != nil {
		t.Fatal(err)
	}
	if r.bps != 16e9 || r.bytes != 4e9 || r.retransmits != 10 {
		t.Fatalf("parseIperf -P 4 = %+v, want the sums 16e9 bit/s, 4e9 bytes, 10 retransmits", r)
	}
	if _, err := parseIperf([]byte(out), 1); err == nil || !strings.Contains(err.Error(), "4 streams, want 1") {
		t.Fatalf("4 streams accepted for 1: %v", err)
	}
}

// FuzzParseIperf: iperf3's output is another program's; nothing in it may panic the parser or
// produce a non-positive throughput or payload.
func FuzzParseIperf(f *testing.F) {
	f.Add([]byte(`{"start":{"test_start":{"num_streams":1}},"end":{"sum_received":{"bits_per_second":1e9,"bytes":1e9},"sum_sent":{"retransmits":3}}}`))
	f.Add([]byte(`{"error":"x"}`))
	f.Add([]byte(`{"end":{"sum_received":{"bits_per_second":-1}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseIperf(b, 1)
		if err == nil && (!(r.bps > 0) || !(r.bytes > 0)) {
			t.Fatalf("accepted throughput %v, payload %v", r.bps, r.bytes)
		}
	})
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-duration", "3s", "-modes", "underlay, fastdp", "-repeat", "3", "-out", ""}, io.Discard)
	if err != nil || c.duration != 3*time.Second || strings.Join(c.modes, "|") != "underlay|fastdp" || c.repeat != 3 || c.out != "" {
		t.Fatalf("parseFlags = %+v, %v", c, err)
	}
	if !slices.Equal(c.streams, []int{1}) {
		t.Fatalf("default -streams %v, want [1]", c.streams)
	}
	if c, err := parseFlags([]string{"-streams", "4"}, io.Discard); err != nil || !slices.Equal(c.streams, []int{4}) {
		t.Fatalf("-streams 4: %+v, %v", c, err)
	}
	if c, err := parseFlags([]string{"-streams", "1, 4"}, io.Discard); err != nil || !slices.Equal(c.streams, []int{1, 4}) {
		t.Fatalf("-streams 1,4: %+v, %v", c, err)
	}
	for _, bad := range [][]string{{"-duration", "100ms"}, {"-repeat", "0"}, {"-streams", "0"}, {"-streams", "129"},
		{"-streams", "1,x"}, {"-streams", "4,4"}, {"-streams", ""}, {"-streams", "1,4", "-interleave=false"}, {"-pings", "0"}, {"extra"}, {"-nope"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestSelectModes(t *testing.T) {
	reg := allModes()
	names := func(ms []Mode) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.Name())
		}
		return strings.Join(s, ",")
	}
	all, err := selectModes(reg, nil)
	if err != nil || len(all) != len(reg) || all[0].Name() != baselineMode {
		t.Fatalf("default selection %q, %v: want every mode, baseline first", names(all), err)
	}
	got, err := selectModes(reg, []string{"underlay"})
	if err != nil || names(got) != baselineMode+",underlay" {
		t.Fatalf("selection of underlay = %q, %v; want the baseline added first", names(got), err)
	}
	if _, err := selectModes(reg, []string{"nope"}); err == nil {
		t.Fatal("unknown mode accepted")
	}
	seen := map[string]bool{}
	for _, m := range reg {
		if seen[m.Name()] {
			t.Fatalf("mode %q registered twice", m.Name())
		}
		seen[m.Name()] = true
	}
}

func TestReportRatios(t *testing.T) {
	r := &Report{Baseline: baselineMode, Results: []Result{
		{Mode: baselineMode, ThroughputBps: 8e9, RTTAvgMs: 0.1},
		{Mode: "underlay", ThroughputBps: 12e9, RTTAvgMs: 0.05},
		{Mode: "sleeve", Error: "boom"},
	}}
	r.finish()
	u := r.Results[1]
	if u.ThroughputRatio == nil || *u.ThroughputRatio != 1.5 || u.RTTRatio == nil || *u.RTTRatio != 0.5 {
		t.Fatalf("ratios of underlay: %v %v", u.ThroughputRatio, u.RTTRatio)
	}
	if r.Results[2].ThroughputRatio != nil {
		t.Fatal("a failed mode got a ratio")
	}
	// A repeated baseline: ratios use the mean of both runs, and the drift is reported.
	r.BaselineRepeat = &Result{Mode: baselineMode, ThroughputBps: 4e9, RTTAvgMs: 0.1}
	r.finish()
	if u := r.Results[1]; u.ThroughputRatio == nil || *u.ThroughputRatio != 2 || r.BaselineDrift == nil || *r.BaselineDrift != 0.5 {
		t.Fatalf("with a repeated baseline: ratio %v drift %v, want 2 and 0.5", u.ThroughputRatio, r.BaselineDrift)
	}
	var buf bytes.Buffer
	r.printTable(&buf)
	for _, want := range []string{"12.00 Gbit/s", "2.00", "FAILED: boom", "drift x0.50"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("table lacks %q:\n%s", want, buf.String())
		}
	}
	dir := t.TempDir()
	path, err := r.write(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != 3 || filepath.Dir(path) != dir {
		t.Fatalf("written report does not read back: %v", err)
	}
}

// fakeRunner hands out throughputs (and RTTs: rtts[k], or 0.1 ms) in turn and logs who ran,
// for the schedule.
type fakeRunner struct {
	name string
	vals []float64
	rtts []float64
	log  *[]string
	fail bool
}

func (f *fakeRunner) ok() bool { return !f.fail }

func (f *fakeRunner) run(_ context.Context, _ time.Duration, _, _ int) (sample, bool) {
	*f.log = append(*f.log, f.name)
	if len(f.vals) == 0 {
		f.fail = true
		return sample{}, false
	}
	v := sample{bps: f.vals[0], rttMs: 0.1}
	f.vals = f.vals[1:]
	if len(f.rtts) > 0 {
		v.rttMs, f.rtts = f.rtts[0], f.rtts[1:]
	}
	return v, true
}

func near(got, want [][]float64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			return false
		}
		for j := range want[i] {
			if d := got[i][j] - want[i][j]; d > 1e-9 || d < -1e-9 {
				return false
			}
		}
	}
	return true
}

// Interleaved, every run of a mode (its RTT and its throughput) sits between two baseline
// runs and is divided by their mean; the modes after the baseline rotate from round to round.
func TestInterleave(t *testing.T) {
	var log []string
	base := &fakeRunner{name: "B", vals: []float64{10, 10, 6, 10, 8}, rtts: []float64{0.1, 0.1, 0.2, 0.1, 0.1}, log: &log}
	a := &fakeRunner{name: "a", vals: []float64{9.5, 6}, rtts: []float64{0.3, 0.45}, log: &log}
	b := &fakeRunner{name: "b", vals: []float64{8, 9}, rtts: []float64{0.2, 0.6}, log: &log}
	ratios, rtts := interleave(context.Background(), []runner{base, a, b}, 2, time.Second)
	if got := strings.Join(log, " "); got != "B a B b B b B a B" {
		t.Fatalf("schedule %q", got)
	}
	// a: 9.5/mean(10,10), 6/mean(10,8); b: 8/mean(10,6), 9/mean(6,10)
	if want := [][]float64{nil, {0.95, 6.0 / 9}, {1, 9.0 / 8}}; !near(ratios, want) {
		t.Fatalf("throughput ratios %v, want %v", ratios, want)
	}
	// The RTT takes the same turns: a: 0.3/mean(0.1,0.1), 0.45/mean(0.1,0.1);
	// b: 0.2/mean(0.1,0.2), 0.6/mean(0.2,0.1).
	if want := [][]float64{nil, {3, 4.5}, {4.0 / 3, 4}}; !near(rtts, want) {
		t.Fatalf("RTT ratios %v, want %v", rtts, want)
	}

	// A mode that fails drops out; a baseline that fails ends the schedule.
	log = nil
	base = &fakeRunner{name: "B", vals: []float64{10, 10}, log: &log}
	a = &fakeRunner{name: "a", vals: []float64{5, 5}, log: &log}
	b = &fakeRunner{name: "b", vals: nil, log: &log}
	ratios, _ = interleave(context.Background(), []runner{base, a, b}, 3, time.Second)
	if got := strings.Join(log, " "); got != "B a B b a B" {
		t.Fatalf("schedule with failures %q", got)
	}
	if len(ratios[1]) != 1 || ratios[1][0] != 0.5 || len(ratios[2]) != 0 {
		t.Fatalf("ratios with failures %v", ratios)
	}
}

// The report's ratio of an interleaved mode is the median of its paired ratios.
func TestReportInterleavedRatios(t *testing.T) {
	r := &Report{Baseline: baselineMode, Interleaved: true, Results: []Result{
		{Mode: baselineMode, ThroughputBps: 10e9, ThroughputRuns: []float64{10e9, 10e9, 6e9, 10e9}, RTTAvgMs: 0.1},
		{Mode: "fastdp", ThroughputBps: 9e9, ThroughputRuns: []float64{9.5e9, 7.2e9, 8e9}, RTTAvgMs: 0.1,
			ThroughputRatioRuns: []float64{0.95, 0.9, 1}, RTTRatioRuns: []float64{1.2, 0.9, 3}},
	}}
	r.finish()
	if f := r.Results[1]; f.ThroughputRatio == nil || *f.ThroughputRatio != 0.95 || r.BaselineDrift == nil || *r.BaselineDrift != 1 {
		t.Fatalf("ratio %v drift %v, want the median 0.95 and drift 1", f.ThroughputRatio, r.BaselineDrift)
	}
	// The RTT ratio is the median of the paired ones too, not the ratio of two medians
	// (here 0.1/0.1 = 1).
	if f := r.Results[1]; f.RTTRatio == nil || *f.RTTRatio != 1.2 {
		t.Fatalf("RTT ratio %v, want the median 1.2", f.RTTRatio)
	}
	if b := r.Results[0]; b.ThroughputRatio == nil || *b.ThroughputRatio != 1 || b.RTTRatio == nil || *b.RTTRatio != 1 {
		t.Fatalf("baseline ratios %v %v, want 1", b.ThroughputRatio, b.RTTRatio)
	}
	var buf bytes.Buffer
	r.printTable(&buf)
	for _, want := range []string{"throughput 0.950 0.900 1.000  (median 0.950, spread 0.900-1.000)",
		"RTT        1.200 0.900 3.000  (median 1.200, spread 0.900-3.000)"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("table lacks %q:\n%s", want, buf.String())
		}
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Fatalf("median of 1..4 = %v", got)
	}
}

// Several RTT measurements are summed up as the median average, the extreme min and max,
// and the mean loss.
func TestSetRTT(t *testing.T) {
	var r Result
	r.setRTT([]netlab.PingResult{
		{Loss: 0, Min: 100 * time.Microsecond, Avg: 300 * time.Microsecond, Max: time.Millisecond, Mdev: 50 * time.Microsecond},
		{Loss: 0.5, Min: 50 * time.Microsecond, Avg: 200 * time.Microsecond, Max: 400 * time.Microsecond, Mdev: 20 * time.Microsecond},
		{Loss: 0.1, Min: 150 * time.Microsecond, Avg: 900 * time.Microsecond, Max: 2 * time.Millisecond, Mdev: 80 * time.Microsecond},
	})
	if r.RTTAvgMs != 0.3 || r.RTTMinMs != 0.05 || r.RTTMaxMs != 2 || r.RTTMdevMs != 0.05 ||
		!slices.Equal(r.RTTRuns, []float64{0.3, 0.2, 0.9}) || r.PingLoss < 0.2-1e-9 || r.PingLoss > 0.2+1e-9 {
		t.Fatalf("setRTT: %+v", r)
	}
}

// A run waits for other iperf3 clients (another bench, a test) and ignores servers.
func TestOtherIperfClients(t *testing.T) {
	proc := t.TempDir()
	for pid, cmdline := range map[string]string{
		"10":   "iperf3\x00-c\x00192.168.240.2\x00-t\x0010\x00",
		"11":   "/usr/bin/iperf3\x00-s\x00-p\x005201\x00",
		"12":   "/usr/bin/iperf3\x00-p\x005201\x00-c\x0010.0.0.1\x00",
		"13":   "sh\x00-c\x00iperf3\x00",
		"self": "iperf3\x00-c\x00x\x00",
	} {
		if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, pid, "cmdline"), []byte(cmdline), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := otherIperfClients(proc); n != 2 {
		t.Fatalf("%d iperf3 clients, want 2 (pids 10 and 12)", n)
	}
}

// TestKernelVXLANBaseline wires the baseline in a real lab and measures it briefly: the
// containers reach each other only through the hand-made VXLAN, and iperf3 moves data.
func TestKernelVXLANBaseline(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "iperf3", "ping", "ss")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	res := measureMode(ctx, config{duration: time.Second, pings: 5, repeat: 2}, kernelVXLAN{}, log)
	if !res.ok() {
		t.Fatalf("kernel-vxlan: %+v", res)
	}
	if len(res.ThroughputRuns) != 2 || !slices.Contains(res.ThroughputRuns, res.ThroughputBps) {
		t.Fatalf("runs %v, throughput %v: want 2 runs, the figure one of them", res.ThroughputRuns, res.ThroughputBps)
	}
	if res.ThroughputBps < 10e6 || res.PingLoss != 0 || res.RTTAvgMs <= 0 {
		t.Fatalf("implausible baseline %+v", res)
	}

	// Interleaved, a session measures nothing at setup (other modes' labs come up after it):
	// each turn measures the RTT, then the throughput.
	s := openSession(ctx, config{duration: time.Second, pings: 5, interleave: true}, kernelVXLAN{}, log)
	defer s.close()
	if !s.ok() || len(s.rtts) != 0 || len(s.runs) != 0 {
		t.Fatalf("session after setup: ok %v, %d RTT and %d iperf3 runs, want none: %+v", s.ok(), len(s.rtts), len(s.runs), s.res)
	}
	for range 2 {
		if v, ok := s.run(ctx, time.Second, 0, 2); !ok || v.bps <= 0 || v.rttMs <= 0 {
			t.Fatalf("turn: %+v %v %+v", v, ok, s.res)
		}
	}
	if res := s.result(); len(res.RTTRuns) != 2 || len(res.ThroughputRuns) != 2 {
		t.Fatalf("two turns gave RTT runs %v and throughput runs %v", res.RTTRuns, res.ThroughputRuns)
	}

	// The containers talk over the VXLAN only: without it they are cut off.
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	env := &Env{Lab: lab, Hosts: [2]*netlab.Host{lab.Hosts[0], lab.Hosts[1]}}
	for i, h := range env.Hosts {
		c, err := h.AddContainer("c1")
		if err != nil {
			t.Fatal(err)
		}
		env.Containers[i] = c
	}
	path, err := kernelVXLAN{}.Setup(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "containers reach each other over the vxlan", func() error {
		loss, _, err := netlab.Ping(ctx, path.Client, path.ServerAddr, 1)
		if err == nil && loss > 0 {
			err = os.ErrDeadlineExceeded
		}
		return err
	})
	if err := lab.BlockUDPPort(env.Hosts[0], env.Hosts[1], 4789); err != nil {
		t.Fatal(err)
	}
	if r, err := netlab.PingWith(ctx, path.Client, path.ServerAddr, netlab.PingOptions{Count: 2, Timeout: 300 * time.Millisecond}); err != nil || r.Loss != 1 {
		t.Fatalf("containers still reach each other with the vxlan port blocked: %+v %v", r, err)
	}
}

// TestWeaveModeWithFakeBinaries drives a weaver mode's Setup against stand-in binaries: it
// must pass the right flags and peer, accept only the overlay it is named for, and give up at
// once, with the reason, when a router exits.
func TestWeaveModeWithFakeBinaries(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newEnv := func(t *testing.T, weaver string) *Env {
		bin := t.TempDir()
		report := `{"router":{"connections":[{"state":"established","overlay":"fastdp","encrypted":false,"mtu":1410}]}}`
		weavectl := "#!/bin/sh\ncase \"$1\" in\nreport) echo '" + report + "';;\nattach) echo \"$WEAVE_SOCKET $*\" >> " + bin + "/attach.log;;\nesac\n"
		for name, script := range map[string]string{"weaver": weaver, "weavectl": weavectl} {
			if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		lab := netlab.New(t, netlab.Options{Hosts: 2})
		env := &Env{Lab: lab, Hosts: [2]*netlab.Host{lab.Hosts[0], lab.Hosts[1]}, BinDir: bin,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		for i, h := range env.Hosts {
			c, err := h.AddContainer("c1")
			if err != nil {
				t.Fatal(err)
			}
			env.Containers[i] = c
		}
		return env
	}

	t.Run("connected", func(t *testing.T) {
		env := newEnv(t, "#!/bin/sh\necho \"$*\" > \"$(dirname \"$4\")/args\"\nexec sleep 1000\n")
		fastdp := weaveMode{name: "fastdp", wantOverlay: "fastdp"}
		if err := fastdp.Available(env); err != nil {
			t.Fatal(err)
		}
		path, err := fastdp.Setup(ctx, env)
		if err != nil {
			t.Fatal(err)
		}
		if path.Info != "fastdp encrypted=false mtu 1410" || path.ServerAddr != containerCIDR(1).Addr() {
			t.Fatalf("path %+v", path)
		}
		dir, _ := env.Hosts[1].Dir()
		args, err := os.ReadFile(filepath.Join(dir, "args"))
		if err != nil || !strings.HasSuffix(strings.TrimSpace(string(args)), env.Hosts[0].Addr.String()) {
			t.Fatalf("h2's weaver args %q (%v): want h1's address as peer", args, err)
		}
		attached, err := os.ReadFile(filepath.Join(env.BinDir, "attach.log"))
		if err != nil || !strings.Contains(string(attached), "attach 192.168.240.2/24 "+env.Containers[1].Name) {
			t.Fatalf("attach calls %q (%v)", attached, err)
		}
	})
	t.Run("router exits", func(t *testing.T) {
		env := newEnv(t, "#!/bin/sh\necho 'weaver: no such flag' >&2\nexit 2\n")
		start := time.Now()
		_, err := weaveMode{name: "sleeve", wantOverlay: "sleeve"}.Setup(ctx, env)
		if err == nil || !strings.Contains(err.Error(), "no such flag") {
			t.Fatalf("Setup = %v, want the router's own error", err)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("gave up only after %v", time.Since(start))
		}
	})
}
