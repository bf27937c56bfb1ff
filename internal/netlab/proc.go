package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const stopGrace = 5 * time.Second

// Proc is a long-running process started in a namespace of the lab.
type Proc struct {
	// Name is the name given to Start.
	Name string
	// Pid is the process ID (also its process group ID).
	Pid int
	// LogPath is the file receiving its stdout and stderr.
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status; written before done is closed

	stopOnce sync.Once
	stopErr  error
}

var procName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func (l *Lab) start(ns, name string, env, argv []string) (*Proc, error) {
	if !procName.MatchString(name) {
		return nil, fmt.Errorf("netlab: process name %q: want 1-64 of [A-Za-z0-9._-]", name)
	}
	if len(argv) == 0 {
		return nil, errors.New("netlab: start: empty command")
	}
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("netlab: lab %s is closed", l.Prefix)
	}
	// A name started twice in one namespace gets a fresh log: "<ns>-<name>.2.log", ...
	var f *os.File
	var logPath string
	for i := 1; ; i++ {
		logPath = filepath.Join(l.Dir, ns+"-"+name+".log")
		if i > 1 {
			logPath = filepath.Join(l.Dir, fmt.Sprintf("%s-%s.%d.log", ns, name, i))
		}
		var err error
		f, err = os.OpenFile(logPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || i >= 1000 {
			return nil, fmt.Errorf("netlab: start %s: %w", name, err)
		}
	}
	// `ip netns exec` execs the command in place, so the PID we get is the command's.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("netlab: start %s in %s: %w", name, ns, err)
	}
	p := &Proc{
		Name:    name,
		Pid:     cmd.Process.Pid,
		LogPath: logPath,
		cmd:     cmd,
		done:    make(chan struct{}),
	}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	closed = l.closed
	l.mu.Unlock()
	if closed { // Close raced with us and will not see p
		p.Stop()
		return nil, fmt.Errorf("netlab: lab %s is closed", l.Prefix)
	}
	return p, nil
}

// Exited is closed when the process has ended.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Running reports whether the process has not ended yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Wait blocks until the process ends and returns its exit error (nil for status 0).
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Log returns everything the process has written so far.
func (p *Proc) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(-p.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("netlab: signal %s: %w", p.Name, err)
	}
	return nil
}

// Stop ends the process group: SIGTERM, then SIGKILL after a grace period. It returns nil when
// the process ended because of Stop, or its exit error when it had already ended by itself
// (a crash the caller may want to know about). It is idempotent.
func (p *Proc) Stop() error {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			p.stopErr = p.err
			return
		default:
		}
		_ = p.Signal(syscall.SIGTERM)
		t := time.NewTimer(stopGrace)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			_ = p.Signal(syscall.SIGKILL)
			<-p.done
		}
		// Children that ignored SIGTERM and outlived the leader go too.
		_ = p.Signal(syscall.SIGKILL)
	})
	return p.stopErr
}
