package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weavemesh/weave/api/client"
)

// launchTimeout is how long launch waits for the router to become ready (CONTRACT: 30 s).
const launchTimeout = 30 * time.Second

const launchDetail = `flags (as weaver's): --name, --nickname, --password, --password-file, --port,
  --ipalloc-range CIDR (default 10.32.0.0/12), --ipalloc-init consensus[=N]|seed=NAME,...|observer,
  --conn-limit, --mtu, --no-fastdp, --no-discovery, --trusted-subnets, --metrics-addr,
  --log-level, --state-dir, --socket
PEER is host[:port]. Prints the peer name once the router is ready (at most 30 s).`

func runLaunch(c *ctx, args []string) error {
	if st, err := statusNow(c); err == nil {
		return fmt.Errorf("weaver is already running (peer %s, pid %d, socket %s); `weavectl stop` first", st.Name, st.PID, c.socket)
	}
	weaver, err := findWeaver(c.env)
	if err != nil {
		return err
	}
	// The password travels in the environment, not on weaver's command line, where any user
	// could read it in ps.
	args, password, err := extractPassword(args)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.stateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	logPath := filepath.Join(c.stateDir, "weaver.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	start, _ := logf.Seek(0, 2)

	cmd := exec.Command(weaver, append([]string{"--state-dir", c.stateDir, "--socket", c.socket}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = os.Environ()
	if password != "" {
		cmd.Env = append(cmd.Env, "WEAVE_PASSWORD="+password)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", weaver, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	fmt.Fprintf(c.env.Stderr, "waiting for weaver (pid %d) to be ready on %s ...\n", cmd.Process.Pid, c.socket)
	deadline := time.Now().Add(launchTimeout)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("weaver exited (%v): %s (log: %s)", err, lastLines(logPath, start, 3), logPath)
		default:
		}
		st, err := statusNow(c)
		if err == nil && st.Ready {
			fmt.Fprintln(c.env.Stdout, st.Name)
			return nil
		}
		if time.Now().After(deadline) {
			why := "socket not answering"
			if err == nil {
				why = "router not ready: " + st.Waiting
			}
			return fmt.Errorf("weaver (pid %d) not ready after %v (%s); see %s", cmd.Process.Pid, launchTimeout, why, logPath)
		}
		time.Sleep(100 * time.Millisecond) // polling a daemon that gives no readiness signal of its own
	}
}

func findWeaver(env Env) (string, error) {
	if p := env.Getenv("WEAVER_BIN"); p != "" {
		return p, nil
	}
	if self, err := env.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "weaver")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("weaver")
	if err != nil {
		return "", errors.New("cannot find the weaver binary beside weavectl or on PATH (set WEAVER_BIN)")
	}
	return p, nil
}

func extractPassword(args []string) (rest []string, password string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--password" || a == "-password":
			if i+1 >= len(args) {
				return nil, "", usageError{"--password needs a value"}
			}
			password = args[i+1]
			i++
		case strings.HasPrefix(a, "--password=") || strings.HasPrefix(a, "-password="):
			_, password, _ = strings.Cut(a, "=")
		default:
			rest = append(rest, a)
		}
	}
	return rest, password, nil
}

// lastLines returns the last n lines written to path after offset, joined with " | ".
func lastLines(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return "(log unreadable)"
	}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "(log empty)"
	}
	return strings.Join(lines, " | ")
}

func runStop(c *ctx, args []string) error {
	if len(args) > 0 {
		return usageError{"stop takes no arguments"}
	}
	cx, cancel := timeout(5 * time.Second)
	defer cancel()
	st, err := c.client.Status(cx)
	if err != nil {
		return err
	}
	if err := c.client.Stop(cx); err != nil {
		return err
	}
	// Wait until the daemon has let go of its socket, so a launch right after works.
	if err := waitGone(c, 15*time.Second); err != nil {
		return fmt.Errorf("weaver (pid %d) did not stop: %w", st.PID, err)
	}
	fmt.Fprintf(c.env.Stdout, "weaver %s stopped\n", st.Name)
	return nil
}

func runReset(c *ctx, args []string) error {
	if len(args) > 0 {
		return usageError{"reset takes no arguments"}
	}
	if _, err := statusNow(c); err == nil {
		cx, cancel := timeout(10 * time.Second)
		defer cancel()
		if err := c.client.Reset(cx); err != nil {
			return err
		}
		if err := waitGone(c, 30*time.Second); err != nil {
			return err
		}
	} else if !errors.Is(err, client.ErrNotRunning) {
		return err
	}
	// Whether the daemon did it or was not running, a stopped weaver finishes the job: the
	// devices and state of a router that was killed are removed the same way.
	weaver, err := findWeaver(c.env)
	if err != nil {
		return err
	}
	out, err := exec.Command(weaver, "--reset", "--state-dir", c.stateDir, "--socket", c.socket).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s", strings.TrimSpace(string(out)))
	}
	fmt.Fprintln(c.env.Stdout, "weave reset: bridge, devices and state removed")
	return nil
}

// waitGone waits until no daemon answers on the socket.
func waitGone(c *ctx, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := statusNow(c); errors.Is(err, client.ErrNotRunning) {
			return nil
		}
		time.Sleep(100 * time.Millisecond) // polling the socket until the daemon is gone
	}
	return fmt.Errorf("weaver still answers on %s after %v", c.socket, d)
}
