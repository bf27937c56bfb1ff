package netlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Iperf runs one iperf3 TCP stream for secs seconds from client to an iperf3 server started in
// server, which listens on addr, and returns the received rate in Gbit/s. extra is passed to
// the client ("-R" reverses the direction). The server is killed on return.
func Iperf(ctx context.Context, client, server Node, addr netip.Addr, secs int, extra ...string) (float64, error) {
	srv, err := server.Start("iperf3-server", nil, "iperf3", "-s", "-1", "--forceflush")
	if err != nil {
		return 0, err
	}
	defer srv.Signal(syscall.SIGKILL)
	if err := WaitFor(ctx, 10*time.Second, func() error {
		if !strings.Contains(srv.Log(), "Server listening") {
			return fmt.Errorf("iperf3 server log: %q", srv.Log())
		}
		return nil
	}); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
	defer cancel()
	// The first connection may race a path that is still being set up: retry it briefly.
	var out []byte
	if err := WaitFor(ctx, 10*time.Second, func() error {
		out, err = client.Run(ctx, append([]string{"iperf3", "-J", "-c", addr.String(), "-t", strconv.Itoa(secs)}, extra...)...)
		if err != nil {
			return fmt.Errorf("iperf3: %v: %.500s", err, out)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %v: %.500s", err, out)
	}
	if res.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", res.Error)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}
