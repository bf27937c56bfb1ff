package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// node is one weaver launched with weavectl in a lab host (own state dir and socket), with a
// container "c" attached at addr. A trimmed sibling of tests/netns' router: those helpers
// live in another package's _test files.
type node struct {
	t        *testing.T
	h        *netlab.Host
	c        *netlab.Container
	weavectl string
	stateDir string
	socket   string
	addr     netip.Addr
}

// launchPair launches routers on both hosts of lab (the second dialling the first) with args,
// and attaches a container to each at 10.32.<i+1>.1/12.
func launchPair(t *testing.T, lab *netlab.Lab, args ...string) [2]*node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var nodes [2]*node
	for i := range nodes {
		h := lab.Hosts[i]
		dir := filepath.Join(lab.Dir, h.Name)
		n := &node{t: t, h: h, weavectl: testutil.Binary(t, "weavectl"),
			stateDir: filepath.Join(dir, "state"), socket: filepath.Join(dir, "weave.sock"),
			addr: netip.AddrFrom4([4]byte{10, 32, byte(i + 1), 1})}
		nodes[i] = n
		t.Cleanup(n.stop)
		a := append([]string{"launch", "--nickname", fmt.Sprintf("h%d", i+1)}, args...)
		if i == 1 {
			a = append(a, lab.Hosts[0].PublicAddr.String())
		}
		if out, err := n.ctl(ctx, a...); err != nil {
			t.Fatalf("launch in %s: %v\n%s\n%s", h.Name, err, out, n.logTail())
		}
		c, err := h.AddContainer("c")
		if err != nil {
			t.Fatal(err)
		}
		n.c = c
		if out, err := n.ctl(ctx, "attach", n.addr.String()+"/12", c.Name); err != nil {
			t.Fatalf("attach in %s: %v\n%s", h.Name, err, out)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Log(n.logTail())
			}
		}
	})
	for _, n := range nodes {
		n.waitEstablished()
	}
	return nodes
}

func (n *node) ctl(ctx context.Context, args ...string) ([]byte, error) {
	return n.h.Run(ctx, append([]string{n.weavectl, "--state-dir", n.stateDir, "--socket", n.socket}, args...)...)
}

// stop ends the router so the lab's namespaces can go; a router that ignores the stop is
// killed by the lab's teardown of its namespace's processes.
func (n *node) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, _ = n.ctl(ctx, "stop")
}

func (n *node) waitEstablished() {
	n.t.Helper()
	testutil.Eventually(n.t, 60*time.Second, n.h.Name+" connection established", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := n.ctl(ctx, "report")
		if err != nil {
			return fmt.Errorf("report: %v: %s", err, out)
		}
		var rep api.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			return err
		}
		for _, c := range rep.Router.Connections {
			if c.State == "established" {
				return nil
			}
		}
		return fmt.Errorf("no established connection: %+v", rep.Router.Connections)
	})
}

func (n *node) logTail() string {
	b, err := os.ReadFile(filepath.Join(n.stateDir, "weaver.log"))
	if err != nil {
		return "(no weaver.log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return fmt.Sprintf("--- %s weaver.log (tail) ---\n%s", n.h.Name, strings.Join(lines, "\n"))
}

// scrape returns the router's metrics page (127.0.0.1:6782 inside its host).
func (n *node) scrape() string {
	n.t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.h.DialContext(ctx, network, addr)
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://127.0.0.1:6782/metrics")
	if err != nil {
		n.t.Fatalf("scrape metrics in %s: %v", n.h.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		n.t.Fatalf("scrape metrics in %s: %s %v", n.h.Name, resp.Status, err)
	}
	return string(b)
}

// metric returns the value of the sample named exactly series ("name" or `name{labels}`),
// 0 if absent.
func (n *node) metric(series string) float64 {
	n.t.Helper()
	for _, line := range strings.Split(n.scrape(), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				n.t.Fatalf("metric %s: %v", series, err)
			}
			return v
		}
	}
	return 0
}

// metricsMatching returns the sample lines starting with prefix, for the log.
func (n *node) metricsMatching(prefix string) string {
	n.t.Helper()
	var out []string
	for _, line := range strings.Split(n.scrape(), "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "; ")
}
