package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ, sysconf(_SC_CLK_TCK),
// which Linux fixes at 100 for user space on every architecture Go supports.
const userHZ = 100

// procStat is what the kernel says about one process.
type procStat struct {
	RSS int64         // VmRSS, bytes
	HWM int64         // VmHWM, the peak RSS since the process started, bytes
	CPU time.Duration // utime + stime, every thread included
}

// readProc reads /proc/<pid>/status and /proc/<pid>/stat.
func readProc(pid int) (procStat, error) {
	var s procStat
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	if s.RSS, s.HWM, err = parseStatus(status); err != nil {
		return s, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	if s.CPU, err = parseStatCPU(stat); err != nil {
		return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return s, nil
}

// parseStatus returns VmRSS and VmHWM in bytes from a /proc/<pid>/status file.
func parseStatus(b []byte) (rss, hwm int64, err error) {
	found := 0
	for line := range bytes.Lines(b) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(name) {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &hwm
		default:
			continue
		}
		fields := strings.Fields(string(value))
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, 0, fmt.Errorf("%s: unexpected value %q", name, bytes.TrimSpace(value))
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, err)
		}
		*dst = kb * 1024
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("no VmRSS or VmHWM (a kernel thread, or a zombie)")
	}
	return rss, hwm, nil
}

// parseStatCPU returns utime + stime from a /proc/<pid>/stat line. The command name (field
// 2) may contain spaces and parentheses, so fields are counted after its last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	// After the name: state (field 3) … utime (14), stime (15).
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(fields))
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// machineCPU returns the time all CPUs spent busy and in total since boot, from /proc/stat.
// Busy is everything but idle and iowait.
func machineCPU() (busy, total time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseMachineCPU(b)
}

func parseMachineCPU(b []byte) (busy, total time.Duration, err error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var all, idle int64
	// user nice system idle iowait irq softirq steal (guest time is already in user).
	for i, f := range fields[1:min(len(fields), 9)] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		all += n
		if i == 3 || i == 4 {
			idle += n
		}
	}
	tick := time.Second / userHZ
	return time.Duration(all-idle) * tick, time.Duration(all) * tick, nil
}

// processesNamed returns the pids whose command name (/proc/<pid>/comm) is name.
func processesNamed(name string) []int {
	paths, _ := filepath.Glob("/proc/[0-9]*/comm")
	var pids []int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
