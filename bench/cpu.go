package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc: the kernel reports them in 1/100 s
// on every architecture Linux supports (sysconf(_SC_CLK_TCK) is fixed at 100 for the ABI), so
// there is no need to ask libc or link golang.org/x/sys for it.
const clockTicks = 100

// cpuSample is one reading of the CPU time spent so far, in seconds: by the routers (the
// weaver processes of a mode; none for the kernel paths) and by the whole machine.
type cpuSample struct {
	routers float64 // user+system of the router processes, 0 when there are none
	machine float64 // busy time of all CPUs: everything but idle and iowait
}

// readCPU reads the router processes' and the machine's CPU time under proc (/proc).
func readCPU(proc string, pids []int) (cpuSample, error) {
	var s cpuSample
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
		if err != nil {
			return cpuSample{}, fmt.Errorf("router cpu time: %w", err)
		}
		ticks, err := parseProcStat(b)
		if err != nil {
			return cpuSample{}, fmt.Errorf("router cpu time of pid %d: %w", pid, err)
		}
		s.routers += float64(ticks) / clockTicks
	}
	b, err := os.ReadFile(filepath.Join(proc, "stat"))
	if err != nil {
		return cpuSample{}, fmt.Errorf("machine cpu time: %w", err)
	}
	busy, err := parseSystemStat(b)
	if err != nil {
		return cpuSample{}, fmt.Errorf("machine cpu time: %w", err)
	}
	s.machine = float64(busy) / clockTicks
	return s, nil
}

// parseProcStat returns utime+stime (fields 14 and 15, in clock ticks, all threads) of a
// /proc/<pid>/stat line. The command name (field 2) is in parentheses and may itself hold
// spaces and parentheses, so the fields are counted from the last ')'.
func parseProcStat(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name in /proc/<pid>/stat")
	}
	// After ") ": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) is 12.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/<pid>/stat: %d fields after the command name, want at least 13", len(f))
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/<pid>/stat utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/<pid>/stat stime: %w", err)
	}
	return utime + stime, nil
}

// parseSystemStat returns the busy time (in clock ticks) of all CPUs from /proc/stat's
// "cpu" line: user, nice, system, irq, softirq and steal; not idle and iowait. Guest time is
// already counted in user and nice, so it is not added again. The softirq time is where the
// kernel paths (VXLAN, the bridge, TCP) do most of their work, which is why this figure gives
// the kernel-only modes a cost too.
func parseSystemStat(b []byte) (uint64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		if len(f) < 9 {
			return 0, fmt.Errorf("/proc/stat cpu line: %d fields, want at least 9", len(f))
		}
		var busy uint64
		for k, v := range f[1:9] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat cpu field %d: %w", k+1, err)
			}
			if k == 3 || k == 4 { // idle, iowait
				continue
			}
			busy += n
		}
		return busy, nil
	}
	return 0, errors.New("/proc/stat: no cpu line")
}

// cpuPerGB is CPU seconds spent per GB (1e9 bytes) carried, or nil when nothing was carried.
func cpuPerGB(before, after float64, bytes float64) *float64 {
	if bytes <= 0 || after < before {
		return nil
	}
	v := (after - before) / (bytes / 1e9)
	return &v
}
