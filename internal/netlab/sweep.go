package netlab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// Sweep removes what crashed runs left behind: every namespace whose name starts with
// prefixRoot and carries a lab prefix (see parsePrefix) whose owning process is gone, the
// processes still running inside those namespaces, and their owner records. Labs of live
// processes (including parallel test binaries) are left alone. Build calls it first.
func Sweep(prefixRoot string) error {
	// A root that is a prefix of another project's root would read part of that project's
	// random string as a PID; roots are letters only, and the project uses PrefixRoot.
	if len(prefixRoot) < 2 || strings.Trim(prefixRoot, "abcdefghijklmnopqrstuvwxyz") != "" {
		return fmt.Errorf("netlab: sweep prefix root %q: want 2 or more lowercase letters", prefixRoot)
	}
	byPrefix := map[string][]string{}
	pids := map[string]int{}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("netlab: list namespaces: %w", err)
	}
	for _, e := range entries {
		prefix, pid, ok := parsePrefix(prefixRoot, e.Name())
		if !ok {
			continue
		}
		byPrefix[prefix] = append(byPrefix[prefix], e.Name())
		pids[prefix] = pid
	}
	// Owner records whose namespaces are already gone still need removing.
	records, err := os.ReadDir(stateRoot)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("netlab: list owner records: %w", err)
	}
	for _, e := range records {
		if prefix, pid, ok := parsePrefix(prefixRoot, e.Name()); ok && prefix == e.Name() {
			if _, seen := byPrefix[prefix]; !seen {
				byPrefix[prefix] = nil
				pids[prefix] = pid
			}
		}
	}
	var errs []error
	for prefix, names := range byPrefix {
		if ownerAlive(prefix, pids[prefix]) {
			continue
		}
		for _, ns := range names {
			if err := deleteNetns(ns); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(filepath.Join(stateRoot, prefix)); err != nil {
			errs = append(errs, fmt.Errorf("netlab: remove owner record of %s: %w", prefix, err))
		}
	}
	return errors.Join(errs...)
}

// writeOwner records this process as the owner of the lab prefix.
func writeOwner(prefix, dir string) error {
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return err
	}
	d := filepath.Join(stateRoot, prefix)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("netlab: owner record: %w", err)
	}
	rec := fmt.Sprintf("pid=%d start=%d dir=%s\n", os.Getpid(), start, dir)
	if err := os.WriteFile(filepath.Join(d, "owner"), []byte(rec), 0o644); err != nil {
		return fmt.Errorf("netlab: owner record: %w", err)
	}
	return nil
}

// ownerAlive reports whether the process that built the lab still runs. The owner record holds
// the PID with its start time, which protects against a recycled PID; without a record the
// PID from the name is all there is.
func ownerAlive(prefix string, namePID int) bool {
	b, err := os.ReadFile(filepath.Join(stateRoot, prefix, "owner"))
	if err != nil {
		return processExists(namePID)
	}
	var pid int
	var start uint64
	for f := range strings.FieldsSeq(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "pid":
			pid, _ = strconv.Atoi(v)
		case "start":
			start, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	if pid <= 0 {
		return processExists(namePID)
	}
	got, err := procStartTime(pid)
	if err != nil {
		return false
	}
	return start == 0 || got == start
}

func processExists(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// procStartTime reads a process's start time (field 22 of /proc/PID/stat, in clock ticks since
// boot), which together with the PID identifies one process for the life of the machine.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("netlab: process %d: %w", pid, err)
	}
	return parseStartTime(b)
}

func parseStartTime(stat []byte) (uint64, error) {
	// The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("netlab: malformed /proc stat: no command name")
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("netlab: malformed /proc stat: %d fields after the name", len(fields))
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("netlab: malformed /proc stat start time: %w", err)
	}
	return v, nil
}

// deleteNetns kills every process still inside the namespace and deletes it. Deleting the
// namespace of a process that still runs would only unname it: its links would live on.
func deleteNetns(ns string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := killNetnsPids(ctx, ns); err != nil {
		return err
	}
	if _, err := runCmd(ctx, "ip", "netns", "del", ns); err != nil {
		if _, serr := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(serr, fs.ErrNotExist) {
			return nil // a parallel sweep got there first
		}
		return fmt.Errorf("netlab: delete netns: %w", err)
	}
	return nil
}

func killNetnsPids(ctx context.Context, ns string) error {
	out, err := runCmd(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return fmt.Errorf("netlab: list processes in %s: %w", ns, err)
	}
	var pids []int
	for f := range strings.FieldsSeq(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			pids = append(pids, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return WaitFor(ctx, 10*time.Second, func() error {
		for _, pid := range pids {
			if processExists(pid) && !isZombie(pid) {
				return fmt.Errorf("process %d in %s still alive after SIGKILL", pid, ns)
			}
		}
		return nil
	})
}

// isZombie reports whether pid has exited but not been reaped; such a process no longer holds
// its namespace.
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}
