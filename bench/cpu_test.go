package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A real /proc/<pid>/stat line (a weaver's), and one whose command name holds spaces and
// parentheses: the fields are counted from the last ')'.
func TestParseProcStat(t *testing.T) {
	for name, tc := range map[string]struct {
		line string
		want uint64
	}{
		"weaver":   {"4242 (weaver) S 4240 4242 4242 0 -1 4194560 2385 0 0 0 1234 567 0 0 20 0 9 0 123456 1300000000 5000 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0\n", 1801},
		"odd name": {"77 (we (ird) ) name) R 1 77 77 0 -1 0 0 0 0 0 5 7 0 0 20 0 1 0 99 0 0\n", 12},
	} {
		got, err := parseProcStat([]byte(tc.line))
		if err != nil || got != tc.want {
			t.Errorf("%s: parseProcStat = %d, %v; want %d", name, got, err, tc.want)
		}
	}
	for name, line := range map[string]string{
		"empty":     "",
		"no name":   "4242 weaver S 1 2 3",
		"short":     "4242 (weaver) S 4240 4242 4242 0 -1 4194560 2385 0 0 0 1234",
		"bad utime": "1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 5 0 0",
		"bad stime": "1 (x) S 1 1 1 0 -1 0 0 0 0 0 5 -5 0 0",
	} {
		if v, err := parseProcStat([]byte(line)); err == nil {
			t.Errorf("%s: accepted %q as %d", name, line, v)
		}
	}
}

// The machine's busy time is every cpu-line field but idle and iowait (guest is inside user).
func TestParseSystemStat(t *testing.T) {
	stat := "cpu  100 2 30 5000 40 6 7 8 50 1\ncpu0 50 1 15 2500 20 3 3 4 25 0\nintr 1 2 3\n"
	got, err := parseSystemStat([]byte(stat))
	if want := uint64(100 + 2 + 30 + 6 + 7 + 8); err != nil || got != want {
		t.Fatalf("parseSystemStat = %d, %v; want %d", got, err, want)
	}
	for name, s := range map[string]string{
		"none":      "intr 1 2\n",
		"short":     "cpu 1 2 3 4\n",
		"bad":       "cpu 1 2 3 4 5 6 x 8\n",
		"cpu0 only": "cpu0 1 2 3 4 5 6 7 8\n",
	} {
		if v, err := parseSystemStat([]byte(s)); err == nil {
			t.Errorf("%s: accepted %q as %d", name, s, v)
		}
	}
}

// FuzzProcStat: nothing /proc could hold may panic the parsers.
func FuzzProcStat(f *testing.F) {
	f.Add([]byte("1 (x) S 1 1 1 0 -1 0 0 0 0 0 5 7 0 0"))
	f.Add([]byte("cpu  1 2 3 4 5 6 7 8 9 10\n"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseProcStat(b)
		_, _ = parseSystemStat(b)
	})
}

// readCPU sums the routers' times and reads the machine's, in seconds of 1/100 s ticks,
// from a /proc laid out like the real one; a router gone is an error, not a zero.
func TestReadCPU(t *testing.T) {
	proc := t.TempDir()
	write := func(rel, s string) {
		t.Helper()
		p := filepath.Join(proc, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("stat", "cpu  1000 0 500 9000 100 0 250 0 0 0\n")
	write("10/stat", "10 (weaver) S 1 10 10 0 -1 0 0 0 0 0 300 100 0 0 20 0 9 0 1 0 0\n")
	write("11/stat", "11 (weaver) S 1 11 11 0 -1 0 0 0 0 0 150 50 0 0 20 0 9 0 1 0 0\n")
	s, err := readCPU(proc, []int{10, 11})
	if err != nil || s.routers != 6 || s.machine != 17.5 {
		t.Fatalf("readCPU = %+v, %v; want routers 6 s, machine 17.5 s", s, err)
	}
	if s, err := readCPU(proc, nil); err != nil || s.routers != 0 || s.machine != 17.5 {
		t.Fatalf("readCPU without routers = %+v, %v", s, err)
	}
	if _, err := readCPU(proc, []int{12}); err == nil {
		t.Fatal("a missing router read as zero CPU")
	}
}

// A run's cost is the CPU time between the readings per GB received; the routers' only for
// a mode with routers.
func TestAddCPU(t *testing.T) {
	r := iperfResult{bytes: 2.5e9}
	r.addCPU(cpuSample{routers: 10, machine: 100}, cpuSample{routers: 15, machine: 110}, true)
	if r.routerCPUPerGB == nil || *r.routerCPUPerGB != 2 || r.machineCPUPerGB == nil || *r.machineCPUPerGB != 4 {
		t.Fatalf("cost %v %v, want 2 and 4 s/GB", r.routerCPUPerGB, r.machineCPUPerGB)
	}
	k := iperfResult{bytes: 1e9}
	k.addCPU(cpuSample{machine: 100}, cpuSample{machine: 103}, false)
	if k.routerCPUPerGB != nil || k.machineCPUPerGB == nil || *k.machineCPUPerGB != 3 {
		t.Fatalf("kernel path cost %v %v, want none and 3 s/GB", k.routerCPUPerGB, k.machineCPUPerGB)
	}
	if v := cpuPerGB(5, 4, 1e9); v != nil {
		t.Fatalf("a clock going back gave %v", *v)
	}
}

// The session's row carries each run's cost and their medians; the table prints the
// medians ("-" for a mode without routers) and each run, the JSON every figure.
func TestCPUInResultTableAndJSON(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	base := &session{res: Result{Mode: baselineMode}, runs: []iperfResult{
		{bps: 8e9, bytes: 10e9, machineCPUPerGB: f(1.5)},
		{bps: 9e9, bytes: 11e9, machineCPUPerGB: f(1.25)},
		{bps: 7e9, bytes: 9e9, machineCPUPerGB: f(1.75)},
	}}
	sleeve := &session{res: Result{Mode: "sleeve"}, runs: []iperfResult{
		{bps: 3e9, bytes: 4e9, routerCPUPerGB: f(3), machineCPUPerGB: f(5)},
		{bps: 4e9, bytes: 5e9, routerCPUPerGB: f(2), machineCPUPerGB: f(4)},
		{bps: 2e9, bytes: 3e9, routerCPUPerGB: f(4), machineCPUPerGB: f(6)},
	}}
	base.streams, sleeve.streams = 4, 4
	r := &Report{Baseline: baselineMode, Streams: []int{4}, Results: []Result{base.result(), sleeve.result()}}
	r.finish()
	b, s := r.Results[0], r.Results[1]
	if b.RouterCPUPerGB != nil || len(b.RouterCPUPerGBRuns) != 0 || b.MachineCPUPerGB == nil || *b.MachineCPUPerGB != 1.5 {
		t.Fatalf("baseline cost %v %v", b.RouterCPUPerGB, b.MachineCPUPerGB)
	}
	if s.RouterCPUPerGB == nil || *s.RouterCPUPerGB != 3 || s.MachineCPUPerGB == nil || *s.MachineCPUPerGB != 5 ||
		len(s.RouterCPUPerGBRuns) != 3 || s.RouterCPUPerGBRuns[1] != 2 {
		t.Fatalf("sleeve cost %+v", s)
	}
	var buf bytes.Buffer
	r.printTable(&buf)
	out := buf.String()
	for _, want := range []string{"4 parallel TCP streams", "CPU ROUTERS", "CPU MACHINE", "3.00 s/GB", "5.00 s/GB", "1.50 s/GB",
		"sleeve -P4       routers 3.000 2.000 4.000  (median 3.000, spread 2.000-4.000)",
		"kernel-vxlan -P4 machine 1.500 1.250 1.750  (median 1.500, spread 1.250-1.750)"} {
		if !strings.Contains(out, want) {
			t.Fatalf("table lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, baselineMode+" -P4 ") && !strings.Contains(line, " - ") {
			t.Fatalf("baseline row has a router cost: %q", line)
		}
	}
	path, err := r.write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Streams []int `json:"streams"`
		Results []map[string]any
	}
	if err := json.Unmarshal(raw, &doc); err != nil || !slices.Equal(doc.Streams, []int{4}) || len(doc.Results) != 2 ||
		doc.Results[1]["streams"] != 4.0 {
		t.Fatalf("JSON %s: %v", raw, err)
	}
	if _, ok := doc.Results[0]["router_cpu_s_per_gb"]; ok {
		t.Fatalf("baseline has a router cost in the JSON: %v", doc.Results[0])
	}
	if doc.Results[1]["router_cpu_s_per_gb"] != 3.0 || doc.Results[1]["machine_cpu_s_per_gb"] != 5.0 ||
		len(doc.Results[1]["router_cpu_s_per_gb_runs"].([]any)) != 3 || doc.Results[0]["machine_cpu_s_per_gb"] != 1.5 {
		t.Fatalf("JSON results %v", doc.Results)
	}
}

// The real /proc of this machine parses: the machine has been busy, at least as long as this
// process.
func TestReadCPUOfThisMachine(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Fatalf("needs Linux /proc: %v", err)
	}
	s, err := readCPU("/proc", []int{os.Getpid()})
	if err != nil || s.machine <= 0 || s.machine < s.routers {
		t.Fatalf("readCPU(/proc, self) = %+v, %v", s, err)
	}
}

// With -streams 1,4 each mode has a row per count, named in the table by its count, and the
// parallel ratio is set against the single-stream one (issue #16's goal).
func TestStreamsPasses(t *testing.T) {
	s := &session{res: Result{Mode: "sleeve"}, streams: 1, runs: []iperfResult{{bps: 3e9, bytes: 1e9}}}
	one := s.result()
	s.beginPass(4)
	if len(s.runs) != 0 || len(s.rtts) != 0 || s.streams != 4 {
		t.Fatalf("beginPass(4) kept the last pass: %+v", s)
	}
	s.runs = []iperfResult{{bps: 5e9, bytes: 2e9}}
	four := s.result()
	if one.Streams != 1 || four.Streams != 4 || four.ThroughputBps != 5e9 || len(four.ThroughputRuns) != 1 {
		t.Fatalf("rows %+v %+v", one, four)
	}
	one.ThroughputRatioRuns, four.ThroughputRatioRuns = []float64{0.4}, []float64{0.3}
	fd1 := Result{Mode: "fastdp", Streams: 1, ThroughputBps: 8e9, ThroughputRuns: []float64{8e9}, ThroughputRatioRuns: []float64{0.9}}
	fd4 := Result{Mode: "fastdp", Streams: 4, ThroughputBps: 9e9, ThroughputRuns: []float64{9e9}, ThroughputRatioRuns: []float64{0.95}}
	r := &Report{Baseline: baselineMode, Interleaved: true, Streams: []int{1, 4}, Results: []Result{
		{Mode: baselineMode, Streams: 1, ThroughputBps: 9e9, ThroughputRuns: []float64{9e9, 9e9}},
		one, fd1,
		{Mode: baselineMode, Streams: 4, ThroughputBps: 1e10, ThroughputRuns: []float64{1e10, 1e10}},
		four, fd4,
	}}
	r.finish()
	if r.Results[3].ThroughputRatio == nil || *r.Results[3].ThroughputRatio != 1 || *r.Results[4].ThroughputRatio != 0.3 {
		t.Fatalf("4-stream ratios %v %v", r.Results[3].ThroughputRatio, r.Results[4].ThroughputRatio)
	}
	var buf bytes.Buffer
	r.printTable(&buf)
	out := buf.String()
	for _, want := range []string{"TCP streams 1, then 4", "\nsleeve -P4 ", "\nkernel-vxlan -P4 ", "\nsleeve ",
		"sleeve           x0.40 with 1 stream, x0.30 with 4: below the 1-stream ratio",
		"fastdp           x0.90 with 1 stream, x0.95 with 4: keeps the 1-stream ratio"} {
		if !strings.Contains(out, want) {
			t.Fatalf("table lacks %q:\n%s", want, out)
		}
	}
}
