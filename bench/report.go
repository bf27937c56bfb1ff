package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the JSON written to <out>/<UTC time>.json.
type Report struct {
	Started         time.Time `json:"started"`
	Finished        time.Time `json:"finished"`
	Machine         Machine   `json:"machine"`
	DurationSeconds float64   `json:"duration_seconds"`
	Pings           int       `json:"pings"`
	Repeat          int       `json:"iperf_runs_per_mode"`
	// Streams are the numbers of parallel TCP streams of the iperf3 runs (-P; throughputs
	// are their sum), one pass of all rounds per count; each result says its own.
	Streams  []int  `json:"streams"`
	Baseline string `json:"baseline"`
	// Interleaved: the modes took turns, one run (RTT, then iperf3) each per round (see
	// -interleave); each result's throughput_ratio and rtt_ratio are then the medians of its
	// throughput_ratio_runs and rtt_ratio_runs.
	Interleaved bool     `json:"interleaved"`
	Results     []Result `json:"results"`
	// BaselineRepeat is the baseline measured again after the other modes; the ratios use the
	// mean of both runs.
	BaselineRepeat *Result `json:"baseline_repeat,omitempty"`
	// BaselineDrift is the repeat's throughput over the first run's (1 = steady machine);
	// interleaved, the last baseline run's over the first's.
	BaselineDrift *float64 `json:"baseline_drift,omitempty"`
}

// Machine identifies where the figures come from; only ratios compare across machines.
type Machine struct {
	Kernel string `json:"kernel"`
	CPU    string `json:"cpu"`
	CPUs   int    `json:"cpus"`
	Go     string `json:"go"`
}

func newReport(cfg config) *Report {
	return &Report{
		Started:         time.Now().UTC(),
		Machine:         machine(),
		DurationSeconds: cfg.duration.Seconds(),
		Pings:           cfg.pings,
		Repeat:          cfg.repeat,
		Streams:         cfg.streams,
		Baseline:        baselineMode,
	}
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

func (r *Report) baseline() *Result {
	for i := range r.Results {
		if r.Results[i].Mode == baselineMode && r.Results[i].ok() {
			return &r.Results[i]
		}
	}
	return nil
}

// measuredOthers reports whether a mode other than the baseline was measured.
func (r *Report) measuredOthers() bool {
	for _, res := range r.Results {
		if res.Mode != baselineMode && res.ok() {
			return true
		}
	}
	return false
}

// finish stamps the end time and fills in the ratios to the baseline.
func (r *Report) finish() {
	r.Finished = time.Now().UTC()
	first := r.baseline()
	if first == nil {
		return
	}
	base := *first
	if again := r.BaselineRepeat; again != nil && again.ok() {
		drift := again.ThroughputBps / first.ThroughputBps
		r.BaselineDrift = &drift
		base.ThroughputBps = (first.ThroughputBps + again.ThroughputBps) / 2
		base.RTTAvgMs = (first.RTTAvgMs + again.RTTAvgMs) / 2
	}
	if b := first.ThroughputRuns; r.Interleaved && len(b) >= 2 && b[0] > 0 {
		drift := b[len(b)-1] / b[0]
		r.BaselineDrift = &drift
	}
	for i := range r.Results {
		res := &r.Results[i]
		if !res.ok() {
			continue
		}
		switch {
		case r.Interleaved && res.Mode == r.Baseline:
			one, alsoOne := 1.0, 1.0
			res.ThroughputRatio, res.RTTRatio = &one, &alsoOne
		case r.Interleaved:
			if len(res.ThroughputRatioRuns) > 0 {
				v := median(res.ThroughputRatioRuns)
				res.ThroughputRatio = &v
			}
			if len(res.RTTRatioRuns) > 0 {
				v := median(res.RTTRatioRuns)
				res.RTTRatio = &v
			}
		default:
			if base.ThroughputBps > 0 {
				v := res.ThroughputBps / base.ThroughputBps
				res.ThroughputRatio = &v
			}
			if base.RTTAvgMs > 0 && res.RTTAvgMs > 0 {
				v := res.RTTAvgMs / base.RTTAvgMs
				res.RTTRatio = &v
			}
		}
	}
}

// medianOrNil is the median of v, nil for none.
func medianOrNil(v []float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	m := median(v)
	return &m
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func (r *Report) printTable(w io.Writer) {
	fmt.Fprintf(w, "\n%s, %d CPUs, kernel %s; iperf3 %s, %gs (median of %d), %d pings; ratios to %s;\n"+
		"CPU: seconds per GB of iperf3 payload, both routers (weaver, user+system) and the whole machine (busy)\n\n",
		r.Machine.CPU, r.Machine.CPUs, r.Machine.Kernel, streamsText(r.Streams), r.DurationSeconds, max(1, r.Repeat), r.Pings, r.Baseline)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MODE\tTHROUGHPUT\tx BASE\tRETRANS\tRTT AVG\tRTT MIN\tx BASE\tLOSS\tCPU ROUTERS\tCPU MACHINE\tINFO")
	for _, res := range r.Results {
		switch {
		case res.Skipped != "":
			fmt.Fprintf(tw, "%s\tskipped: %s\n", label(res), res.Skipped)
			continue
		case res.Error != "":
			fmt.Fprintf(tw, "%s\tFAILED: %s\n", label(res), oneLine(res.Error, 160))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.3f ms\t%.3f ms\t%s\t%.0f%%\t%s\t%s\t%s\n",
			label(res), gbits(res.ThroughputBps), ratio(res.ThroughputRatio), res.Retransmits,
			res.RTTAvgMs, res.RTTMinMs, ratio(res.RTTRatio), res.PingLoss*100,
			cpuText(res.RouterCPUPerGB), cpuText(res.MachineCPUPerGB), res.Info)
	}
	tw.Flush()
	cpuHeader := false
	for _, res := range r.Results {
		for _, c := range []struct {
			what string
			runs []float64
		}{{"routers", res.RouterCPUPerGBRuns}, {"machine", res.MachineCPUPerGBRuns}} {
			line := spread(c.runs)
			if line == "" {
				continue
			}
			if !cpuHeader {
				fmt.Fprintf(w, "\nCPU seconds per GB, each run:\n")
				cpuHeader = true
			}
			fmt.Fprintf(w, "  %-16s %s %s\n", label(res), c.what, line)
		}
	}
	r.printStreams(w)
	if r.Interleaved {
		fmt.Fprintf(w, "\nmodes took turns, each run (RTT, then throughput) between two %s runs; its ratios are to their mean:\n", r.Baseline)
		for _, res := range r.Results {
			if res.Mode == r.Baseline {
				continue
			}
			if line := spread(res.ThroughputRatioRuns); line != "" {
				fmt.Fprintf(w, "  %-16s throughput %s\n", label(res), line)
			}
			if line := spread(res.RTTRatioRuns); line != "" {
				fmt.Fprintf(w, "  %-16s RTT        %s\n", label(res), line)
			}
		}
		if r.BaselineDrift != nil {
			fmt.Fprintf(w, "%s drift from the first run to the last: x%.2f\n", r.Baseline, *r.BaselineDrift)
		}
	}
	switch again := r.BaselineRepeat; {
	case again == nil:
	case !again.ok():
		fmt.Fprintf(w, "\n%s measured again at the end: %s%s\n", r.Baseline, again.Skipped, oneLine(again.Error, 160))
	default:
		fmt.Fprintf(w, "\n%s measured again at the end: %s, RTT %.3f ms; drift x%.2f (ratios use the mean of both)\n",
			r.Baseline, gbits(again.ThroughputBps), again.RTTAvgMs, *r.BaselineDrift)
	}
}

// spread lists per-run ratios with their median and range ("" for none).
func spread(runs []float64) string {
	if len(runs) == 0 {
		return ""
	}
	parts := make([]string, len(runs))
	for i, v := range runs {
		parts[i] = fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%s  (median %.3f, spread %.3f-%.3f)", strings.Join(parts, " "), median(runs),
		slices.Min(runs), slices.Max(runs))
}

func streamsText(counts []int) string {
	switch {
	case len(counts) == 0 || len(counts) == 1 && counts[0] <= 1:
		return "1 TCP stream"
	case len(counts) == 1:
		return fmt.Sprintf("%d parallel TCP streams", counts[0])
	}
	parts := make([]string, len(counts))
	for i, n := range counts {
		parts[i] = strconv.Itoa(n)
	}
	return "TCP streams " + strings.Join(parts, ", then ") + " (-P, a pass of all rounds each)"
}

// label names a row in the table: the mode, and its stream count when it ran several.
func label(res Result) string {
	if res.Streams > 1 {
		return fmt.Sprintf("%s -P%d", res.Mode, res.Streams)
	}
	return res.Mode
}

// printStreams compares, for each mode measured with one stream and with several, the
// throughput ratios (issue #16: the aggregate of parallel streams should keep at least the
// single-stream ratio).
func (r *Report) printStreams(w io.Writer) {
	if len(r.Streams) < 2 {
		return
	}
	single := map[string]*float64{}
	for _, res := range r.Results {
		if res.Streams <= 1 && res.ok() && res.ThroughputRatio != nil {
			single[res.Mode] = res.ThroughputRatio
		}
	}
	header := false
	for _, res := range r.Results {
		one := single[res.Mode]
		if res.Streams <= 1 || res.Mode == r.Baseline || one == nil || !res.ok() || res.ThroughputRatio == nil {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\nparallel streams against one (each to %s with as many streams):\n", r.Baseline)
			header = true
		}
		verdict := "keeps the 1-stream ratio"
		if *res.ThroughputRatio < *one {
			verdict = "below the 1-stream ratio"
		}
		fmt.Fprintf(w, "  %-16s x%.2f with 1 stream, x%.2f with %d: %s\n", res.Mode, *one, *res.ThroughputRatio, res.Streams, verdict)
	}
}

// cpuText is a CPU cost per GB for the table; "-" where there is none (no router of ours).
func cpuText(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f s/GB", *v)
}

func gbits(bps float64) string {
	if bps >= 1e9 {
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	}
	return fmt.Sprintf("%.0f Mbit/s", bps/1e6)
}

func ratio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *v)
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// write stores the report as <dir>/<UTC start time>.json and returns the path.
func (r *Report) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("results dir: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode results: %w", err)
	}
	path := filepath.Join(dir, r.Started.Format("2006-01-02T150405Z")+".json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("write results: %w", err)
	}
	return path, nil
}
