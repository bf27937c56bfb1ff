package netns

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// router is one weaver launched with weavectl in a lab host, with its own state dir and
// socket, as several routers on one machine must be.
type router struct {
	t        testing.TB
	host     *netlab.Host
	weavectl string
	stateDir string
	socket   string
	name     string
}

func newRouter(t testing.TB, h *netlab.Host) *router {
	dir := filepath.Join(h.Lab().Dir, h.Name)
	return &router{
		t:        t,
		host:     h,
		weavectl: testutil.Binary(t, "weavectl"),
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "weave.sock"),
	}
}

// ctl runs weavectl in the router's host with its state dir and socket.
func (r *router) ctl(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{r.weavectl, "--state-dir", r.stateDir, "--socket", r.socket}, args...)
	return r.host.Run(ctx, argv...)
}

// launch starts the router and registers its stop (and, if that fails, a kill) for cleanup.
func (r *router) launch(args ...string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	r.t.Cleanup(r.kill)
	out, err := r.ctl(ctx, append([]string{"launch", "--nickname", shortName(r.host.Name)}, args...)...)
	if err != nil {
		r.t.Fatalf("launch in %s: %v\n%s\n%s", r.host.Name, err, out, r.logTail())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	r.name = lines[len(lines)-1]
}

// launchOneHost builds a one-host lab and launches a router in it (args as launch's),
// dumping its log if the test fails.
func launchOneHost(t *testing.T, args ...string) (*netlab.Host, *router) {
	t.Helper()
	h := netlab.New(t, netlab.Options{Hosts: 1}).Hosts[0]
	r := newRouter(t, h)
	dumpOnFailure(t, r)
	r.launch(args...)
	return h, r
}

func shortName(ns string) string {
	if i := strings.LastIndex(ns, "-"); i >= 0 {
		return ns[i+1:]
	}
	return ns
}

func (r *router) report() api.Report {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := r.ctl(ctx, "report")
	if err != nil {
		r.t.Fatalf("report in %s: %v\n%s", r.host.Name, err, out)
	}
	var rep api.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		r.t.Fatalf("report in %s is not JSON: %v\n%s", r.host.Name, err, out)
	}
	return rep
}

// pid reads the PID the daemon wrote into its state-dir lock.
func (r *router) pid() int {
	b, err := os.ReadFile(filepath.Join(r.stateDir, "weaver.lock"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// kill makes sure no weaver of this router outlives the test: a graceful stop first, then
// SIGKILL, so that the lab's namespaces can really go away.
func (r *router) kill() {
	pid := r.pid()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := r.ctl(ctx, "stop"); err == nil {
		return
	}
	if pid > 0 && syscall.Kill(pid, 0) == nil {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (r *router) logTail() string {
	b, err := os.ReadFile(filepath.Join(r.stateDir, "weaver.log"))
	if err != nil {
		return "(no weaver.log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return fmt.Sprintf("--- %s weaver.log (tail) ---\n%s", r.host.Name, strings.Join(lines, "\n"))
}

// dumpOnFailure prints every router's log when the test fails.
func dumpOnFailure(t *testing.T, rs ...*router) {
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range rs {
				t.Log(r.logTail())
			}
		}
	})
}

// metrics scrapes the router's Prometheus endpoint (127.0.0.1:6782 inside its host).
func (r *router) metrics() string {
	r.t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return r.host.DialContext(ctx, network, addr)
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://127.0.0.1:6782/metrics")
	if err != nil {
		r.t.Fatalf("scrape metrics in %s: %v", r.host.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		r.t.Fatalf("scrape metrics in %s: %s %v", r.host.Name, resp.Status, err)
	}
	return string(b)
}

// kill9 kills the router's weaver with SIGKILL and waits until it is gone.
func (r *router) kill9(t testing.TB) {
	t.Helper()
	pid := r.pid()
	if pid <= 0 {
		t.Fatalf("no weaver pid for %s", r.host.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
	testutil.Eventually(t, 10*time.Second, "weaver gone after kill -9", func() error {
		if syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("pid %d still alive", pid)
		}
		return nil
	})
}
