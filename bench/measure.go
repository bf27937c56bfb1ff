package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netlab"
)

const (
	iperfPort      = "5201"
	reachableLimit = 30 * time.Second
	pingInterval   = 20 * time.Millisecond
)

// Result is one mode's row. Ratios are to the baseline of the same run (nil when the baseline
// or this mode failed).
type Result struct {
	Mode        string    `json:"mode"`
	Description string    `json:"description"`
	Info        string    `json:"info,omitempty"`
	Skipped     string    `json:"skipped,omitempty"`
	Error       string    `json:"error,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	// Streams is the number of parallel TCP streams of this row's iperf3 runs; with several
	// (-streams 1,4) a mode has one row per count, each with ratios to the baseline's row
	// of the same count.
	Streams   int     `json:"streams"`
	SetupSecs float64 `json:"setup_seconds"`

	ThroughputBps   float64   `json:"throughput_bps"`      // median of ThroughputRuns
	ThroughputRuns  []float64 `json:"throughput_runs_bps"` // in the order they ran
	Retransmits     int       `json:"retransmits"`
	SenderCPU       float64   `json:"sender_cpu_percent"`
	ReceiverCPU     float64   `json:"receiver_cpu_percent"`
	RTTMinMs        float64   `json:"rtt_min_ms"`
	RTTAvgMs        float64   `json:"rtt_avg_ms"`
	RTTMaxMs        float64   `json:"rtt_max_ms"`
	RTTMdevMs       float64   `json:"rtt_mdev_ms"`
	PingLoss        float64   `json:"ping_loss"`
	ThroughputRatio *float64  `json:"throughput_ratio,omitempty"`
	// ThroughputRatioRuns (interleaved benches) are each run's ratio to the baseline runs
	// just before and after it, in the order they ran.
	ThroughputRatioRuns []float64 `json:"throughput_ratio_runs,omitempty"`
	// RTTRuns are the average RTT of each measurement, in the order they ran (interleaved:
	// one per round, before that round's iperf3 run); RTTAvgMs is their median.
	RTTRuns  []float64 `json:"rtt_avg_runs_ms,omitempty"`
	RTTRatio *float64  `json:"rtt_ratio,omitempty"`
	// RTTRatioRuns (interleaved benches) are each RTT measurement's ratio to the baseline's
	// just before and after it; RTTRatio is then their median.
	RTTRatioRuns []float64 `json:"rtt_ratio_runs,omitempty"`
	// RouterCPUPerGBRuns are, for each iperf3 run in the order they ran, both routers'
	// (weaver processes') user+system CPU seconds during the run per GB (1e9 bytes) of
	// iperf3 payload received; none for the modes without a router of ours. RouterCPUPerGB
	// is their median.
	RouterCPUPerGBRuns []float64 `json:"router_cpu_s_per_gb_runs,omitempty"`
	RouterCPUPerGB     *float64  `json:"router_cpu_s_per_gb,omitempty"`
	// MachineCPUPerGBRuns are the same for the whole machine's busy CPU time (/proc/stat:
	// everything but idle and iowait, so the kernel's softirq work of every mode counts, and
	// so does any other work on the machine at the time); MachineCPUPerGB is their median.
	MachineCPUPerGBRuns []float64 `json:"machine_cpu_s_per_gb_runs,omitempty"`
	MachineCPUPerGB     *float64  `json:"machine_cpu_s_per_gb,omitempty"`
}

func (r Result) ok() bool { return r.Error == "" && r.Skipped == "" }

// measureMode runs one mode in a fresh lab, which it always tears down: RTT, then
// cfg.repeat iperf3 runs back to back.
func measureMode(ctx context.Context, cfg config, m Mode, log *slog.Logger) Result {
	s := openSession(ctx, cfg, m, log)
	defer s.close()
	s.pingOnce(ctx)
	for range max(1, cfg.repeat) {
		if !s.ok() {
			break
		}
		s.iperfOnce(ctx, cfg.duration)
	}
	return s.result()
}

// A session is one mode's lab, set up and idle between iperf3 runs, so that runs of several
// modes can take turns (interleave) while each keeps its own lab.
type session struct {
	res     Result
	lab     *netlab.Lab
	path    Path
	srv     *netlab.Proc
	log     *slog.Logger
	keep    bool
	quiet   time.Duration
	pings   int
	streams int
	runs    []iperfResult       // in the order they ran
	rtts    []netlab.PingResult // in the order they ran
}

func (s *session) ok() bool { return s.res.ok() }

func (s *session) fail(err error) {
	if s.res.Error == "" {
		s.res.Error = err.Error()
	}
}

// openSession builds a lab for m, wires it, waits until the path carries ping and starts the
// iperf3 server. It measures nothing: the caller decides when (pingOnce, iperfOnce), so
// that interleaved modes measure in turns. A failure is recorded in the result.
func openSession(ctx context.Context, cfg config, m Mode, log *slog.Logger) *session {
	s := &session{res: Result{Mode: m.Name(), Description: m.Description(), StartedAt: time.Now().UTC()},
		log: log, keep: cfg.keep, quiet: cfg.quiet, pings: cfg.pings, streams: 1}
	if len(cfg.streams) > 0 {
		s.streams = cfg.streams[0]
	}
	env := &Env{BinDir: absBin(cfg.binDir), Log: log.With(logx.KeyMode, m.Name())}
	if err := m.Available(env); err != nil {
		s.res.Skipped = err.Error()
		return s
	}
	setupStart := time.Now()
	lab, err := netlab.Build(ctx, netlab.Options{Hosts: 2, KeepDir: cfg.keep, Logger: env.Log})
	if err != nil {
		s.fail(err)
		return s
	}
	s.lab = lab
	env.Lab = lab
	for i := range env.Hosts {
		env.Hosts[i] = lab.Hosts[i]
		if env.Containers[i], err = lab.Hosts[i].AddContainer("c1"); err != nil {
			s.fail(err)
			return s
		}
	}
	path, err := m.Setup(ctx, env)
	if err != nil {
		s.fail(fmt.Errorf("setup: %w", err))
		return s
	}
	s.path = path
	s.res.Info = path.Info
	if err := netlab.WaitFor(ctx, reachableLimit, func() error {
		loss, _, err := netlab.Ping(ctx, path.Client, path.ServerAddr, 1)
		if err == nil && loss > 0 {
			err = fmt.Errorf("%s does not answer ping", path.ServerAddr)
		}
		return err
	}); err != nil {
		s.fail(err)
		return s
	}
	s.res.SetupSecs = time.Since(setupStart).Seconds()
	if s.srv, err = startIperfServer(ctx, path); err != nil {
		s.fail(err)
	}
	return s
}

// beginPass starts a pass of runs with n parallel streams: the runs of the pass before are
// no longer the session's (its row was taken); a failure stays.
func (s *session) beginPass(n int) {
	s.streams, s.runs, s.rtts = n, nil, nil
}

// pingOnce measures the RTT once, on the idle path (no iperf3 run of ours is going); a
// failure ends the session's runs.
func (s *session) pingOnce(ctx context.Context) {
	if !s.ok() {
		return
	}
	pr, err := netlab.PingWith(ctx, s.path.Client, s.path.ServerAddr, netlab.PingOptions{Count: s.pings, Interval: pingInterval})
	if err != nil {
		s.fail(err)
		return
	}
	s.rtts = append(s.rtts, pr)
}

// iperfOnce runs the iperf3 client once and keeps the run; a failure ends the session's runs.
func (s *session) iperfOnce(ctx context.Context, d time.Duration) {
	if !s.ok() {
		return
	}
	r, err := iperfRun(ctx, s.path, d, s.quiet, s.streams)
	if err != nil {
		s.fail(err)
		return
	}
	s.runs = append(s.runs, r)
}

// result is the mode's row: the median run stands for the mode (on a shared machine one
// run can be far off); every run is listed in the order it ran.
func (s *session) result() Result {
	res := s.res
	res.Streams = s.streams
	if !res.ok() || len(s.runs) == 0 {
		if res.ok() {
			res.Error = "no iperf3 run"
		}
		return res
	}
	sorted := slices.Clone(s.runs)
	slices.SortFunc(sorted, func(a, b iperfResult) int { return cmp.Compare(a.bps, b.bps) })
	mid := sorted[len(sorted)/2]
	res.ThroughputBps, res.Retransmits = mid.bps, mid.retransmits
	res.SenderCPU, res.ReceiverCPU = mid.senderCPU, mid.receiverCPU
	for _, r := range s.runs {
		res.ThroughputRuns = append(res.ThroughputRuns, r.bps)
		if r.routerCPUPerGB != nil {
			res.RouterCPUPerGBRuns = append(res.RouterCPUPerGBRuns, *r.routerCPUPerGB)
		}
		if r.machineCPUPerGB != nil {
			res.MachineCPUPerGBRuns = append(res.MachineCPUPerGBRuns, *r.machineCPUPerGB)
		}
	}
	res.RouterCPUPerGB = medianOrNil(res.RouterCPUPerGBRuns)
	res.MachineCPUPerGB = medianOrNil(res.MachineCPUPerGBRuns)
	res.setRTT(s.rtts)
	return res
}

// setRTT summarises the RTT measurements: the median average and deviation, the extreme
// minimum and maximum, the mean loss.
func (r *Result) setRTT(rtts []netlab.PingResult) {
	if len(rtts) == 0 {
		return
	}
	var mdevs []float64
	r.RTTMinMs, r.RTTMaxMs, r.PingLoss, r.RTTRuns = math.Inf(1), 0, 0, nil
	for _, p := range rtts {
		r.RTTRuns = append(r.RTTRuns, ms(p.Avg))
		mdevs = append(mdevs, ms(p.Mdev))
		r.RTTMinMs, r.RTTMaxMs = min(r.RTTMinMs, ms(p.Min)), max(r.RTTMaxMs, ms(p.Max))
		r.PingLoss += p.Loss / float64(len(rtts))
	}
	r.RTTAvgMs, r.RTTMdevMs = median(r.RTTRuns), median(mdevs)
}

// close stops the iperf3 server and tears the lab down; idempotent.
func (s *session) close() {
	if s.srv != nil {
		s.srv.Stop()
		s.srv = nil
	}
	if s.lab == nil {
		return
	}
	if err := s.lab.Close(); err != nil {
		s.log.Warn("tear down lab", logx.KeyMode, s.res.Mode, logx.KeyErr, err)
	}
	if s.keep {
		fmt.Fprintf(os.Stderr, "bench: %s: logs kept in %s\n", s.res.Mode, s.lab.Dir)
	}
	s.lab = nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func startIperfServer(ctx context.Context, path Path) (*netlab.Proc, error) {
	srv, err := path.Server.Start("iperf3-server", nil, "iperf3", "-s", "-p", iperfPort)
	if err != nil {
		return nil, err
	}
	if err := netlab.WaitFor(ctx, 10*time.Second, func() error {
		if !srv.Running() {
			return errors.New("iperf3 server exited: " + srv.Log())
		}
		out, err := path.Server.Run(ctx, "ss", "-Hltn", "sport = :"+iperfPort)
		if err == nil && len(strings.TrimSpace(string(out))) == 0 {
			err = errors.New("iperf3 server not listening yet")
		}
		return err
	}); err != nil {
		srv.Stop()
		return nil, err
	}
	return srv, nil
}

// iperfRun runs the iperf3 client once (streams parallel TCP streams) against the server of
// path, once no other iperf3 client runs on the machine (another bench or a test: two streams
// sharing the CPUs would measure each other) or after quiet. The CPU time of the path's
// routers and of the machine is read right before and after the client runs.
func iperfRun(ctx context.Context, path Path, d, quiet time.Duration, streams int) (iperfResult, error) {
	if quiet > 0 {
		if err := netlab.WaitFor(ctx, quiet, func() error {
			if n := otherIperfClients("/proc"); n > 0 {
				return fmt.Errorf("%d other iperf3 clients running", n)
			}
			return nil
		}); err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "bench: measuring anyway after %v: %v\n", quiet, err)
		}
	}
	secs := max(1, int(math.Round(d.Seconds())))
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	before, err := readCPU("/proc", path.RouterPids)
	if err != nil {
		return iperfResult{}, err
	}
	out, runErr := path.Client.Run(cctx, "iperf3", "-c", path.ServerAddr.String(), "-p", iperfPort,
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(max(1, streams)), "-J", "--connect-timeout", "5000")
	after, cpuErr := readCPU("/proc", path.RouterPids)
	r, err := parseIperf(out, max(1, streams))
	if err != nil {
		return iperfResult{}, errors.Join(err, runErr)
	}
	if cpuErr != nil { // a router gone during the run: the run does not count
		return iperfResult{}, cpuErr
	}
	r.addCPU(before, after, len(path.RouterPids) > 0)
	return r, nil
}

// addCPU sets the run's CPU cost per GB from the readings around it; the routers' only when
// the mode has routers.
func (r *iperfResult) addCPU(before, after cpuSample, routers bool) {
	if routers {
		r.routerCPUPerGB = cpuPerGB(before.routers, after.routers, r.bytes)
	}
	r.machineCPUPerGB = cpuPerGB(before.machine, after.machine, r.bytes)
}

type iperfResult struct {
	bps                    float64
	bytes                  float64 // payload received by the server, all streams
	retransmits            int
	senderCPU, receiverCPU float64
	// CPU seconds per GB of payload (nil: not measured; no routers for routerCPUPerGB).
	routerCPUPerGB, machineCPUPerGB *float64
}

// parseIperf reads the summary of `iperf3 -c -J -P streams`: throughput and payload as
// received by the server, summed over the streams; a run with another number of streams
// than asked for is refused.
func parseIperf(out []byte, streams int) (iperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		Start struct {
			TestStart struct {
				NumStreams int `json:"num_streams"`
			} `json:"test_start"`
		} `json:"start"`
		End struct {
			SumSent struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Retransmits   int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
			CPU struct {
				HostTotal   float64 `json:"host_total"`
				RemoteTotal float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 output is not JSON (%w): %.300q", err, out)
	}
	if doc.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	bps := doc.End.SumReceived.BitsPerSecond
	if bps <= 0 || math.IsInf(bps, 0) || math.IsNaN(bps) {
		return iperfResult{}, fmt.Errorf("iperf3 reported no throughput (%v)", bps)
	}
	if n := doc.Start.TestStart.NumStreams; n != streams {
		return iperfResult{}, fmt.Errorf("iperf3 ran %d streams, want %d", n, streams)
	}
	payload := doc.End.SumReceived.Bytes
	if payload <= 0 || math.IsInf(payload, 0) || math.IsNaN(payload) {
		return iperfResult{}, fmt.Errorf("iperf3 reported no payload received (%v bytes)", payload)
	}
	return iperfResult{
		bps:         bps,
		bytes:       payload,
		retransmits: doc.End.SumSent.Retransmits,
		senderCPU:   doc.End.CPU.HostTotal,
		receiverCPU: doc.End.CPU.RemoteTotal,
	}, nil
}

// otherIperfClients counts the iperf3 client processes under proc (/proc): ours are never
// running when it is called.
func otherIperfClients(proc string) int {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == "iperf3" && slices.Contains(args[1:], "-c") {
			n++
		}
	}
	return n
}
