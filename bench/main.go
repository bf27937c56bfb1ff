// Command bench measures the data paths of the overlay on one machine: for each mode it builds a
// fresh two-host namespace lab (internal/netlab) with one container per host, then measures
// iperf3 TCP throughput (one stream) and ping RTT between the containers, and reports every
// figure as a ratio to a hand-made kernel VXLAN measured in the same run (by default right
// before and after each run of a mode, see -interleave), so that numbers from different
// machines can be compared by their ratios.
//
//	go run ./bench [-out bench/results] [-duration 10s] [-modes underlay,kernel-vxlan,...]
//
// It needs root, iproute2, iptables, iperf3 and ping (scripts/install-deps.sh). Modes that run
// our binaries take them from -bin (default bin/, `make build`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	out        string
	duration   time.Duration
	modes      []string
	pings      int
	repeat     int
	streams    []int // parallel TCP streams of the iperf3 runs: one pass of rounds per count
	binDir     string
	keep       bool
	verbose    bool
	listModes  bool
	interleave bool
	quiet      time.Duration // wait for other iperf3 clients before each run (0: do not)
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var modes string
	var streams string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.out, "out", "bench/results", "directory for the JSON result (empty: do not write)")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "time of each iperf3 run")
	fs.StringVar(&modes, "modes", "", "comma-separated modes to run (default: all; "+baselineMode+" is always added)")
	fs.IntVar(&c.pings, "pings", 50, "pings per RTT measurement")
	fs.IntVar(&c.repeat, "repeat", 1, "runs per mode (use 3 or 5 on a busy machine): with -interleave, rounds, each mode's ratios the median of its "+
		"per-round ratios; with -interleave=false, iperf3 runs back to back after one RTT measurement, the median run counts")
	fs.StringVar(&streams, "streams", "1", "parallel TCP streams of each iperf3 run (iperf3 -P), the baseline's too: throughput is their sum; "+
		"a comma-separated list (e.g. 1,4, needs -interleave) runs all the rounds once per count, every mode in the same labs, "+
		"each count's ratios to the baseline with as many streams")
	fs.StringVar(&c.binDir, "bin", "bin", "directory of weaver and weavectl for the modes that run them")
	fs.BoolVar(&c.interleave, "interleave", true, "keep every mode's lab up and take turns: in each round every mode runs once (RTT, then iperf3) "+
		"between two "+baselineMode+" runs (B M1 B M2 B ..., the order rotating each round), and each run's ratios are to the mean of "+
		"those two baseline runs; false: one mode after the other, each in its own lab, the baseline again at the end")
	fs.DurationVar(&c.quiet, "quiet", 3*time.Minute, "before each run, wait up to this long until no other iperf3 client runs on the machine (0: do not wait)")
	fs.BoolVar(&c.keep, "keep", false, "keep each lab's directory (process logs) after the run")
	fs.BoolVar(&c.verbose, "v", false, "log the lab's progress")
	fs.BoolVar(&c.listModes, "list", false, "list the modes and exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.duration < time.Second {
		return c, fmt.Errorf("-duration %v: at least 1s", c.duration)
	}
	if c.pings < 1 {
		return c, fmt.Errorf("-pings %d: at least 1", c.pings)
	}
	for f := range strings.SplitSeq(streams, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 128 {
			return c, fmt.Errorf("-streams %q: each count 1 to 128 (iperf3's limit)", streams)
		}
		if slices.Contains(c.streams, n) {
			return c, fmt.Errorf("-streams %q: %d twice", streams, n)
		}
		c.streams = append(c.streams, n)
	}
	if len(c.streams) > 1 && !c.interleave {
		return c, fmt.Errorf("-streams %q: several counts need -interleave", streams)
	}
	if c.repeat < 1 || c.repeat > 20 {
		return c, fmt.Errorf("-repeat %d: 1 to 20", c.repeat)
	}
	if modes != "" {
		for m := range strings.SplitSeq(modes, ",") {
			if m = strings.TrimSpace(m); m != "" {
				c.modes = append(c.modes, m)
			}
		}
	}
	return c, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 2
	}
	registry := allModes()
	if cfg.listModes {
		for _, m := range registry {
			fmt.Fprintf(stdout, "%-18s %s\n", m.Name(), m.Description())
		}
		return 0
	}
	selected, err := selectModes(registry, cfg.modes)
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 2
	}
	if err := preflight(); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	level := slog.LevelWarn
	if cfg.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep := newReport(cfg)
	if cfg.interleave {
		measureInterleaved(ctx, cfg, selected, log, rep, stderr)
	} else {
		measureInTurn(ctx, cfg, selected, log, rep, stderr)
	}
	rep.finish()
	rep.printTable(stdout)
	if cfg.out != "" {
		path, err := rep.write(cfg.out)
		if err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "\nwrote %s\n", path)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "bench: interrupted")
		return 1
	}
	if rep.baseline() == nil {
		fmt.Fprintf(stderr, "bench: the %s baseline failed: no ratios\n", baselineMode)
		return 1
	}
	return 0
}

// measureInTurn measures each mode in full (all its runs), one after the other, and the
// baseline again at the end.
func measureInTurn(ctx context.Context, cfg config, selected []Mode, log *slog.Logger, rep *Report, stderr io.Writer) {
	for _, m := range selected {
		fmt.Fprintf(stderr, "bench: %s ...\n", m.Name())
		res := measureMode(ctx, cfg, m, log)
		if res.Error != "" {
			fmt.Fprintf(stderr, "bench: %s: %s\n", m.Name(), res.Error)
		}
		rep.Results = append(rep.Results, res)
		if ctx.Err() != nil {
			return
		}
	}
	// Measure the baseline again at the end: on a shared machine the drift between the two
	// says how far to trust the ratios, and their mean is a fairer reference.
	if ctx.Err() == nil && rep.baseline() != nil && rep.measuredOthers() {
		fmt.Fprintf(stderr, "bench: %s (again) ...\n", baselineMode)
		again := measureMode(ctx, cfg, selected[0], log)
		rep.BaselineRepeat = &again
	}
}

// measureInterleaved sets every mode up first, then runs rounds in which every other mode
// runs once with a baseline run right before and right after it (B M1 B M2 B ...; each
// baseline run serves the mode before it and the one after it): a run's ratio is to the
// mean of those two, so a machine that other work slows down for a while moves both sides
// of the ratio, however many modes there are.
func measureInterleaved(ctx context.Context, cfg config, selected []Mode, log *slog.Logger, rep *Report, stderr io.Writer) {
	rep.Interleaved = true
	sessions := make([]*session, 0, len(selected))
	defer func() {
		for _, s := range sessions {
			s.close()
		}
	}()
	for _, m := range selected {
		fmt.Fprintf(stderr, "bench: %s: setting up ...\n", m.Name())
		s := openSession(ctx, cfg, m, log)
		sessions = append(sessions, s)
		if s.res.Error != "" {
			fmt.Fprintf(stderr, "bench: %s: %s\n", m.Name(), s.res.Error)
			s.close() // a failed lab is not kept up
		}
		if ctx.Err() != nil {
			return
		}
	}
	runners := make([]runner, len(sessions))
	for i, s := range sessions {
		runners[i] = loggedRunner{s, stderr}
	}
	// One pass of rounds per stream count, in the same labs: each count's runs are paired
	// with baseline runs of as many streams.
	for pass, n := range cfg.streams {
		if pass > 0 && ctx.Err() != nil {
			return
		}
		for _, s := range sessions {
			s.beginPass(n)
		}
		tput, rtt := interleave(ctx, runners, max(1, cfg.repeat), cfg.duration)
		for i, s := range sessions {
			res := s.result()
			if res.Error != "" && ctx.Err() == nil && pass == 0 {
				fmt.Fprintf(stderr, "bench: %s: %s\n", res.Mode, res.Error)
			}
			res.ThroughputRatioRuns, res.RTTRatioRuns = tput[i], rtt[i]
			rep.Results = append(rep.Results, res)
		}
	}
}

// sample is one turn of a mode: the RTT on the idle path, then the throughput.
type sample struct{ bps, rttMs float64 }

// runner is what interleave drives: a session, or a fake in tests.
type runner interface {
	ok() bool
	// run measures once; false when it failed (ok turns false).
	run(ctx context.Context, d time.Duration, round, rounds int) (sample, bool)
}

// run measures the RTT first, on the idle path, then the throughput: both take turns with
// the other modes, so neither is measured while another mode's lab is busier than now.
func (s *session) run(ctx context.Context, d time.Duration, _, _ int) (sample, bool) {
	s.pingOnce(ctx)
	s.iperfOnce(ctx, d)
	if !s.ok() {
		return sample{}, false
	}
	return sample{bps: s.runs[len(s.runs)-1].bps, rttMs: ms(s.rtts[len(s.rtts)-1].Avg)}, true
}

type loggedRunner struct {
	*session
	w io.Writer
}

func (l loggedRunner) run(ctx context.Context, d time.Duration, round, rounds int) (sample, bool) {
	fmt.Fprintf(l.w, "bench: round %d/%d: %s ...\n", round+1, rounds, l.res.Mode)
	return l.session.run(ctx, d, round, rounds)
}

// interleave runs the schedule of measureInterleaved over rs (rs[0] is the baseline) and
// returns each runner's throughput and RTT ratios, one per run, to the baseline runs around
// it (none for the baseline itself). It stops when the baseline fails or ctx ends.
func interleave(ctx context.Context, rs []runner, rounds int, d time.Duration) (tput, rtt [][]float64) {
	tput, rtt = make([][]float64, len(rs)), make([][]float64, len(rs))
	base := rs[0]
	if !base.ok() {
		return tput, rtt
	}
	prev, ok := base.run(ctx, d, 0, rounds)
	if !ok {
		return tput, rtt
	}
	others := make([]int, 0, len(rs)-1)
	for i := 1; i < len(rs); i++ {
		others = append(others, i)
	}
	for r := range rounds {
		if len(others) == 0 && r > 0 {
			// The baseline alone: one run per round.
			if _, ok := base.run(ctx, d, r, rounds); !ok {
				return tput, rtt
			}
		}
		for _, i := range rotate(others, r) {
			if ctx.Err() != nil {
				return tput, rtt
			}
			if !rs[i].ok() {
				continue
			}
			v, ok := rs[i].run(ctx, d, r, rounds)
			if !ok {
				continue
			}
			next, ok := base.run(ctx, d, r, rounds)
			if !ok {
				return tput, rtt
			}
			if ref := (prev.bps + next.bps) / 2; ref > 0 {
				tput[i] = append(tput[i], v.bps/ref)
			}
			if ref := (prev.rttMs + next.rttMs) / 2; ref > 0 && v.rttMs > 0 {
				rtt[i] = append(rtt[i], v.rttMs/ref)
			}
			prev = next
		}
	}
	return tput, rtt
}

// rotate returns s rotated left by r, so that no mode always runs first (or last) in a round.
func rotate[T any](s []T, r int) []T {
	if len(s) == 0 {
		return s
	}
	k := r % len(s)
	return append(slices.Clone(s[k:]), s[:k]...)
}

// selectModes returns the requested modes in registry order, always with the baseline first so
// that every other figure has its reference from the same run.
func selectModes(registry []Mode, names []string) ([]Mode, error) {
	if len(names) == 0 {
		return registry, nil
	}
	want := map[string]bool{baselineMode: true}
	for _, n := range names {
		found := false
		for _, m := range registry {
			found = found || m.Name() == n
		}
		if !found {
			return nil, fmt.Errorf("unknown mode %q (see -list)", n)
		}
		want[n] = true
	}
	var out []Mode
	for _, m := range registry {
		if want[m.Name()] {
			out = append(out, m)
		}
	}
	return out, nil
}

func preflight() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("needs Linux network namespaces, not %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, veth, iptables)")
	}
	for _, tool := range []string{"ip", "iptables", "iperf3", "ping", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s on PATH (scripts/install-deps.sh installs it): %w", tool, err)
		}
	}
	return nil
}

// absBin resolves the binary directory once, since processes run from other directories.
func absBin(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}
