package vmlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Verdict is what the guest reported.
type Verdict int

const (
	// NoVerdict: QEMU ended without the guest writing to isa-debug-exit (kernel panic, init died).
	NoVerdict Verdict = iota
	Passed
	Failed
)

func (v Verdict) String() string {
	switch v {
	case Passed:
		return "passed"
	case Failed:
		return "failed"
	}
	return "no verdict"
}

// statusLine starts the line the guest's init prints with the test binary's exit status.
const statusLine = "vmlab: test exit status "

// bootConfig is one VM run.
type bootConfig struct {
	kernel, initrd string
	memMB, cpus    int
	// qemu is the emulator to run; empty means qemu-system-x86_64 (tests put a fake here).
	qemu    string
	timeout time.Duration
	// line receives every line of the guest's serial console as it comes.
	line func(string)
}

// qemuArgs builds the command line measured on this machine kind: TCG always (KVM hangs on a
// stock kernel here), no devices but the serial console and isa-debug-exit, no reboot.
func qemuArgs(cfg bootConfig) []string {
	return []string{
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-m", strconv.Itoa(cfg.memMB), "-smp", strconv.Itoa(cfg.cpus),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-nic", "none", "-no-reboot",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel", cfg.kernel, "-initrd", cfg.initrd,
		"-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
	}
}

// InterruptedError is boot's error when an interrupt or SIGTERM came while QEMU ran. The
// caller cleans up and then delivers Signal to itself again (see runInVM).
type InterruptedError struct{ Signal os.Signal }

func (e *InterruptedError) Error() string {
	return "interrupted by " + e.Signal.String() + " (QEMU killed)"
}

// boot runs QEMU until the guest gives its verdict, dies, the timeout passes or an interrupt
// comes; QEMU is killed in every case before boot returns (and, on Linux, if this process dies
// first).
func boot(ctx context.Context, cfg bootConfig) (Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	// While QEMU runs an interrupt is ours to handle, so that the temporary files go too.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	caught := make(chan os.Signal, 1)
	watchDone := make(chan struct{})
	defer close(watchDone)
	go func() { // owned by boot: ends when boot returns
		select {
		case s := <-sigs:
			caught <- s
			cancel()
		case <-watchDone:
		}
	}()
	qemu := cfg.qemu
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	cmd := exec.CommandContext(ctx, qemu, qemuArgs(cfg)...)
	setDeathSignal(cmd)
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		return NoVerdict, fmt.Errorf("start qemu: %w", err)
	}
	waitErr := make(chan error, 1)
	go func() { // owned by boot: ends when QEMU does, and boot waits for it
		err := cmd.Wait()
		pw.Close()
		waitErr <- err
	}()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	guestStatus := ""
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		if st, ok := strings.CutPrefix(l, statusLine); ok {
			guestStatus, _, _ = strings.Cut(st, " ")
		}
		cfg.line(l)
	}
	_, _ = io.Copy(io.Discard, pr)
	err := <-waitErr
	select {
	case s := <-caught:
		return NoVerdict, &InterruptedError{Signal: s}
	default:
	}
	if ctx.Err() != nil {
		return NoVerdict, fmt.Errorf("VM did not finish within %v (QEMU killed): %w", cfg.timeout, ctx.Err())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return NoVerdict, errors.New("the guest ended without a verdict (kernel panic or init died; see the console above)")
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		// QEMU also exits 1 on its own errors: only the guest's status line makes it a pass.
		if guestStatus != "0" {
			return NoVerdict, fmt.Errorf("qemu exited 1 but the guest never reported its test passed (status %q): %w", guestStatus, err)
		}
		return Passed, nil
	case errors.As(err, &ee) && ee.ExitCode() == 3:
		return Failed, nil
	}
	return NoVerdict, fmt.Errorf("qemu: %w", err)
}
