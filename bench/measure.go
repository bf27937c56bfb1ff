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
	"slices"
	"strconv"
	"strings"
	"time"

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
	SetupSecs   float64   `json:"setup_seconds"`

	ThroughputBps   float64   `json:"throughput_bps"` // median of ThroughputRuns
	ThroughputRuns  []float64 `json:"throughput_runs_bps"`
	Retransmits     int       `json:"retransmits"`
	SenderCPU       float64   `json:"sender_cpu_percent"`
	ReceiverCPU     float64   `json:"receiver_cpu_percent"`
	RTTMinMs        float64   `json:"rtt_min_ms"`
	RTTAvgMs        float64   `json:"rtt_avg_ms"`
	RTTMaxMs        float64   `json:"rtt_max_ms"`
	RTTMdevMs       float64   `json:"rtt_mdev_ms"`
	PingLoss        float64   `json:"ping_loss"`
	ThroughputRatio *float64  `json:"throughput_ratio,omitempty"`
	RTTRatio        *float64  `json:"rtt_ratio,omitempty"`
}

func (r Result) ok() bool { return r.Error == "" && r.Skipped == "" }

// measureMode runs one mode in a fresh lab, which it always tears down.
func measureMode(ctx context.Context, cfg config, m Mode, log *slog.Logger) (res Result) {
	res = Result{Mode: m.Name(), Description: m.Description(), StartedAt: time.Now().UTC()}
	env := &Env{BinDir: absBin(cfg.binDir), Log: log.With("mode", m.Name())}
	if err := m.Available(env); err != nil {
		res.Skipped = err.Error()
		return res
	}
	fail := func(err error) Result {
		res.Error = err.Error()
		return res
	}
	setupStart := time.Now()
	lab, err := netlab.Build(ctx, netlab.Options{Hosts: 2, KeepDir: cfg.keep, Logger: env.Log})
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err := lab.Close(); err != nil {
			log.Warn("tear down lab", "mode", m.Name(), "err", err)
		}
		if cfg.keep {
			fmt.Fprintf(os.Stderr, "bench: %s: logs kept in %s\n", m.Name(), lab.Dir)
		}
	}()
	env.Lab = lab
	for i := range env.Hosts {
		env.Hosts[i] = lab.Hosts[i]
		if env.Containers[i], err = lab.Hosts[i].AddContainer("c1"); err != nil {
			return fail(err)
		}
	}
	path, err := m.Setup(ctx, env)
	if err != nil {
		return fail(fmt.Errorf("setup: %w", err))
	}
	res.Info = path.Info
	if err := netlab.WaitFor(ctx, reachableLimit, func() error {
		loss, _, err := netlab.Ping(ctx, path.Client, path.ServerAddr, 1)
		if err == nil && loss > 0 {
			err = fmt.Errorf("%s does not answer ping", path.ServerAddr)
		}
		return err
	}); err != nil {
		return fail(err)
	}
	res.SetupSecs = time.Since(setupStart).Seconds()

	// RTT first, on an idle path.
	pr, err := netlab.PingWith(ctx, path.Client, path.ServerAddr, netlab.PingOptions{Count: cfg.pings, Interval: pingInterval})
	if err != nil {
		return fail(err)
	}
	res.PingLoss = pr.Loss
	res.RTTMinMs, res.RTTAvgMs, res.RTTMaxMs, res.RTTMdevMs = ms(pr.Min), ms(pr.Avg), ms(pr.Max), ms(pr.Mdev)

	runs, err := runIperf(ctx, path, cfg.duration, cfg.repeat)
	if err != nil {
		return fail(err)
	}
	// The median run stands for the mode: on a shared machine one run can be far off.
	slices.SortFunc(runs, func(a, b iperfResult) int { return cmp.Compare(a.bps, b.bps) })
	mid := runs[len(runs)/2]
	res.ThroughputBps, res.Retransmits = mid.bps, mid.retransmits
	res.SenderCPU, res.ReceiverCPU = mid.senderCPU, mid.receiverCPU
	for _, r := range runs {
		res.ThroughputRuns = append(res.ThroughputRuns, r.bps)
	}
	return res
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runIperf runs the iperf3 client n times against one server.
func runIperf(ctx context.Context, path Path, d time.Duration, n int) ([]iperfResult, error) {
	srv, err := path.Server.Start("iperf3-server", nil, "iperf3", "-s", "-p", iperfPort)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
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
		return nil, err
	}
	secs := max(1, int(math.Round(d.Seconds())))
	var runs []iperfResult
	for range max(1, n) {
		cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
		out, runErr := path.Client.Run(cctx, "iperf3", "-c", path.ServerAddr.String(), "-p", iperfPort,
			"-t", strconv.Itoa(secs), "-J", "--connect-timeout", "5000")
		cancel()
		r, err := parseIperf(out)
		if err != nil {
			return nil, errors.Join(err, runErr)
		}
		runs = append(runs, r)
	}
	return runs, nil
}

type iperfResult struct {
	bps                    float64
	retransmits            int
	senderCPU, receiverCPU float64
}

// parseIperf reads the summary of `iperf3 -c -J`: throughput as received by the server.
func parseIperf(out []byte) (iperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Retransmits   int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
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
	return iperfResult{
		bps:         bps,
		retransmits: doc.End.SumSent.Retransmits,
		senderCPU:   doc.End.CPU.HostTotal,
		receiverCPU: doc.End.CPU.RemoteTotal,
	}, nil
}
