package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"time"
)

// PingOptions tune PingWith; zero values pick the defaults noted.
type PingOptions struct {
	Count    int           // echo requests; default 3
	Interval time.Duration // between requests; default 50ms
	Timeout  time.Duration // wait for the last reply; default 1s
	Size     int           // ICMP payload bytes; default ping's 56
	// DontFragment sets DF (ping -M do): an oversize packet fails instead of fragmenting.
	DontFragment bool
}

// PingResult is what ping reported.
type PingResult struct {
	Sent, Received int
	// Loss is the fraction of requests without reply, 0 to 1.
	Loss float64
	// RTT statistics; zero when nothing came back.
	Min, Avg, Max, Mdev time.Duration
}

// Ping sends count echo requests from from to to and returns the loss fraction and average RTT.
// Unreachable is not an error: it is loss 1. An error means ping itself could not run.
func Ping(ctx context.Context, from Runner, to netip.Addr, count int) (loss float64, rtt time.Duration, err error) {
	r, err := PingWith(ctx, from, to, PingOptions{Count: count})
	return r.Loss, r.Avg, err
}

// PingWith runs ping with options; see Ping.
func PingWith(ctx context.Context, from Runner, to netip.Addr, o PingOptions) (PingResult, error) {
	if o.Count <= 0 {
		o.Count = 3
	}
	if o.Interval <= 0 {
		o.Interval = 50 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	argv := []string{"ping", "-n", "-q", "-c", strconv.Itoa(o.Count),
		"-i", strconv.FormatFloat(o.Interval.Seconds(), 'f', 3, 64),
		"-W", strconv.FormatFloat(o.Timeout.Seconds(), 'f', 3, 64)}
	if o.Size > 0 {
		argv = append(argv, "-s", strconv.Itoa(o.Size))
	}
	if o.DontFragment {
		argv = append(argv, "-M", "do")
	}
	argv = append(argv, to.String())
	// ping exits 1 when replies are missing; its summary still says how many.
	out, runErr := from.Run(ctx, argv...)
	r, err := parsePing(out)
	if err != nil && noRoute.Match(out) {
		return PingResult{Sent: o.Count, Loss: 1}, nil
	}
	if err != nil {
		return PingResult{}, errors.Join(fmt.Errorf("ping %s: %w", to, err), runErr)
	}
	return r, nil
}

var (
	pingCounts = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTT    = regexp.MustCompile(`= ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms`)
	// noRoute is ping failing before sending anything, for want of a route.
	noRoute = regexp.MustCompile(`Network is unreachable|No route to host`)
)

// parsePing reads the summary of iputils ping.
func parsePing(out []byte) (PingResult, error) {
	var r PingResult
	m := pingCounts.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no summary in ping output %q", tail(string(out), 300))
	}
	var err1, err2 error
	r.Sent, err1 = strconv.Atoi(string(m[1]))
	r.Received, err2 = strconv.Atoi(string(m[2]))
	if err := errors.Join(err1, err2); err != nil || r.Sent <= 0 || r.Received < 0 || r.Received > r.Sent {
		return PingResult{}, fmt.Errorf("bad counts in ping output %q", m[0])
	}
	r.Loss = 1 - float64(r.Received)/float64(r.Sent)
	if r.Received == 0 {
		return r, nil
	}
	m = pingRTT.FindSubmatch(out)
	if m == nil {
		return PingResult{}, fmt.Errorf("no rtt in ping output %q", tail(string(out), 300))
	}
	for i, d := range []*time.Duration{&r.Min, &r.Avg, &r.Max, &r.Mdev} {
		ms, err := strconv.ParseFloat(string(m[i+1]), 64)
		if err != nil || ms < 0 || ms > 1e9 {
			return PingResult{}, fmt.Errorf("bad rtt %q in ping output", m[i+1])
		}
		*d = time.Duration(ms * float64(time.Millisecond))
	}
	return r, nil
}
