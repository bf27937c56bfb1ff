// Command demo is `make demo`: a guided tour of the project on one machine. It builds three
// hosts as network namespaces, launches a router on each with a password (each knowing only one
// other), attaches two containers per host, shows traffic crossing the mesh and the routers'
// status, then cleans up (KEEP=1 keeps the lab for poking around).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

const password = "demo-password-change-me"

type tour struct {
	out    io.Writer
	bin    string
	lab    *netlab.Lab
	step   int
	failed []string
}

type demoHost struct {
	h          *netlab.Host
	nick       string
	stateDir   string
	socket     string
	name       string
	containers []*netlab.Container
	addrs      []netip.Prefix
}

func main() {
	bin := flag.String("bin", "bin", "directory holding weaver and weavectl")
	keep := flag.Bool("keep", os.Getenv("KEEP") == "1", "keep the lab running at the end (also KEEP=1)")
	clean := flag.Bool("clean", false, "remove labs kept by earlier runs (their routers included) and exit")
	flag.Parse()
	if *clean {
		if err := netlab.Sweep(netlab.PrefixRoot); err != nil {
			fmt.Fprintf(os.Stderr, "demo: clean: %v\n", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t := &tour{out: os.Stdout, bin: *bin}
	if err := t.run(ctx, *keep); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
	if len(t.failed) > 0 {
		fmt.Fprintf(os.Stderr, "\ndemo finished with failures: %s\n", strings.Join(t.failed, "; "))
		os.Exit(1)
	}
}

func (t *tour) heading(title, what string) {
	t.step++
	fmt.Fprintf(t.out, "\n\033[1m== Step %d: %s\033[0m\n", t.step, title)
	for _, l := range strings.Split(what, "\n") {
		fmt.Fprintf(t.out, "   %s\n", l)
	}
	fmt.Fprintln(t.out)
}

func (t *tour) say(format string, args ...any) { fmt.Fprintf(t.out, "   "+format+"\n", args...) }

func (t *tour) ctl(ctx context.Context, dh *demoHost, args ...string) (string, error) {
	argv := append([]string{filepath.Join(t.bin, "weavectl"), "--state-dir", dh.stateDir, "--socket", dh.socket}, args...)
	out, err := dh.h.Run(ctx, argv...)
	return string(out), err
}

func (t *tour) run(ctx context.Context, keep bool) error {
	abs, err := filepath.Abs(t.bin)
	if err != nil {
		return err
	}
	t.bin = abs
	for _, b := range []string{"weaver", "weavectl"} {
		if _, err := os.Stat(filepath.Join(t.bin, b)); err != nil {
			return fmt.Errorf("%s not built (run `make build`): %w", b, err)
		}
	}
	fmt.Fprintln(t.out, "weave demo: a layer-2 overlay across three hosts, on this machine")

	t.heading("Build three hosts", "Each host is a network namespace with one link to a shared underlay switch\n(10.201.0.0/24). Nothing here touches the machine's own network.")
	lab, err := netlab.Build(ctx, netlab.Options{Hosts: 3, KeepDir: keep})
	if err != nil {
		return fmt.Errorf("build lab: %w", err)
	}
	t.lab = lab
	if !keep {
		defer lab.Close()
	}
	var hosts []*demoHost
	for i, h := range lab.Hosts {
		dir, err := h.Dir()
		if err != nil {
			return err
		}
		dh := &demoHost{h: h, nick: fmt.Sprintf("host%d", i+1), stateDir: filepath.Join(dir, "state"), socket: filepath.Join(dir, "weave.sock")}
		hosts = append(hosts, dh)
		t.say("%-6s namespace %-16s underlay address %s", dh.nick, h.Name, h.Addr)
		if !keep {
			defer func() {
				c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				t.ctl(c, dh, "stop")
			}()
		}
	}

	t.heading("Launch a router on each host", "Every router gets the same password, so every connection is encrypted.\nhost1 knows nobody, host2 knows host1, host3 knows only host2: the mesh finds the rest.\nThe three agree by consensus on how to split the address range 10.32.0.0/12.")
	for i, dh := range hosts {
		args := []string{"launch", "--nickname", dh.nick, "--password", password, "--ipalloc-init", "consensus=3"}
		if i > 0 {
			args = append(args, hosts[i-1].h.Addr.String())
		}
		out, err := t.ctl(ctx, dh, args...)
		if err != nil {
			return fmt.Errorf("launch on %s: %v\n%s", dh.nick, err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		dh.name = lines[len(lines)-1]
		knows := "knows nobody yet"
		if i > 0 {
			knows = "knows " + hosts[i-1].nick
		}
		t.say("%s$ weavectl launch --password ... %-12s -> peer %s (%s)", dh.nick, strings.Join(args[7:], " "), dh.name, knows)
	}

	t.heading("Wait for the mesh to form", "Routers gossip their connections; host3 learns of host1 through host2 and dials it.")
	start := time.Now()
	err = testutil.WaitFor(ctx, 30*time.Second, func() error {
		for _, dh := range hosts {
			out, err := t.ctl(ctx, dh, "status")
			if err != nil {
				return err
			}
			if !strings.Contains(out, "Connections: 2 (2 established)") || !strings.Contains(out, "Peers: 3") {
				return fmt.Errorf("%s not fully connected yet", dh.nick)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mesh did not form: %w", err)
	}
	t.say("all three routers connected to each other, encrypted, in %v", time.Since(start).Round(10*time.Millisecond))

	t.heading("Attach two containers per host", "`weavectl attach NETNS` puts an interface ethwe on the router's bridge into the\ncontainer's namespace, with an address from the built-in IPAM: never the same twice.")
	for _, dh := range hosts {
		for j := 1; j <= 2; j++ {
			c, err := dh.h.AddContainer(fmt.Sprintf("c%d", j))
			if err != nil {
				return err
			}
			out, err := t.ctl(ctx, dh, "attach", c.Name)
			if err != nil {
				return fmt.Errorf("attach on %s: %v\n%s", dh.nick, err, out)
			}
			cidr, err := netip.ParsePrefix(strings.TrimSpace(out))
			if err != nil {
				return fmt.Errorf("attach on %s printed %q", dh.nick, out)
			}
			dh.containers = append(dh.containers, c)
			dh.addrs = append(dh.addrs, cidr)
			t.say("$ weavectl attach %s/c%d   -> %s", dh.nick, j, cidr)
		}
	}

	t.heading("Ping across the mesh", "From host1's first container to every other container: same host (bridge),\nand other hosts (over the encrypted overlay).")
	src := hosts[0].containers[0]
	rtt := regexp.MustCompile(`rtt min/avg/max/mdev = [0-9.]+/([0-9.]+)/`)
	for _, dh := range hosts {
		for j, a := range dh.addrs {
			if dh == hosts[0] && j == 0 {
				continue
			}
			out, err := src.Run(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "2", a.Addr().String())
			if err != nil {
				t.say("host1/c1 -> %s/c%d (%s): FAILED", dh.nick, j+1, a.Addr())
				t.failed = append(t.failed, fmt.Sprintf("ping %s/c%d", dh.nick, j+1))
				continue
			}
			avg := "?"
			if m := rtt.FindStringSubmatch(string(out)); m != nil {
				avg = m[1] + " ms"
			}
			t.say("host1/c1 -> %s/c%d (%s): 3/3 replies, avg rtt %s", dh.nick, j+1, a.Addr(), avg)
		}
	}

	t.heading("Throughput between hosts", "iperf3 for 3 seconds, one TCP stream, from host1/c1 to host3/c2.")
	if err := t.iperf(ctx, src, hosts[2].containers[1], hosts[2].addrs[1].Addr()); err != nil {
		t.say("iperf3 FAILED: %v", err)
		t.failed = append(t.failed, "iperf3")
	}

	t.heading("What the routers say", "`weavectl status`, `status connections` and `status ipam` on host1.")
	for _, args := range [][]string{{"status"}, {"status", "connections"}, {"status", "ipam"}} {
		out, err := t.ctl(ctx, hosts[0], args...)
		if err != nil {
			return fmt.Errorf("weavectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.say("$ weavectl %s", strings.Join(args, " "))
		for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			t.say("  %s", l)
		}
		fmt.Fprintln(t.out)
	}

	if keep {
		t.heading("The lab stays up (KEEP=1)", "Step into a host or a container and look around:")
		dh := hosts[0]
		t.say("ip netns exec %s bash", dh.h.Name)
		t.say("ip netns exec %s ping %s", dh.containers[0].Name, hosts[1].addrs[0].Addr())
		t.say("ip netns exec %s %s --state-dir %s --socket %s status peers", dh.h.Name, filepath.Join(t.bin, "weavectl"), dh.stateDir, dh.socket)
		t.say("logs: %s", lab.Dir)
		t.say("clean up: make demo-clean (the next demo or test run also sweeps it)")
		return nil
	}
	t.heading("Clean up", "Routers stopped, namespaces removed.")
	return nil
}

func (t *tour) iperf(ctx context.Context, client, server *netlab.Container, addr netip.Addr) error {
	srv, err := server.Start("iperf3-server", nil, "iperf3", "-s", "-1")
	if err != nil {
		return err
	}
	defer srv.Stop()
	var out []byte
	err = testutil.WaitFor(ctx, 10*time.Second, func() error {
		out, err = client.Run(ctx, "iperf3", "-c", addr.String(), "-t", "3", "-f", "m")
		return err
	})
	if err != nil {
		return errors.New(strings.TrimSpace(string(out)))
	}
	re := regexp.MustCompile(`([0-9.]+ [MG]bits/sec).*receiver`)
	if m := re.FindStringSubmatch(string(out)); m != nil {
		t.say("host1/c1 -> host3/c2: %s", m[1])
		return nil
	}
	return fmt.Errorf("no result in iperf3 output:\n%s", out)
}
