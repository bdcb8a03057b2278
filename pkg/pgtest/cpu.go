package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// BackendCPU measures the CPU time PostgreSQL spends serving one database: the user and
// system time of the backends connected to it (this test's pools, and the services'
// under test), read from /proc. Benchmarks report it per operation, so that a change's
// cost in PostgreSQL is measured, not only its cost in the Go process. It works only when
// PostgreSQL runs on this machine and its processes are readable (the development set-up).
type BackendCPU struct {
	pool  *pgxpool.Pool
	start map[int32]time.Duration
}

// StartBackendCPU starts measuring the backends of pool's database.
func StartBackendCPU(ctx context.Context, pool *pgxpool.Pool) (*BackendCPU, error) {
	c := &BackendCPU{pool: pool}
	var err error
	c.start, err = c.read(ctx)
	return c, err
}

// Used returns the CPU time the database's backends used since StartBackendCPU: the
// backends connected now, less what each had used at the start (a backend that connected
// since counts in full, one that disconnected meanwhile is missing). Keep the pools open
// until it is read.
func (c *BackendCPU) Used(ctx context.Context) (time.Duration, error) {
	now, err := c.read(ctx)
	if err != nil {
		return 0, err
	}
	var used time.Duration
	for pid, cpu := range now {
		used += cpu - c.start[pid]
	}
	return used, nil
}

func (c *BackendCPU) read(ctx context.Context) (map[int32]time.Duration, error) {
	rows, err := c.pool.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
	if err != nil {
		return nil, fmt.Errorf("list backends: %w", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("list backends: %w", err)
	}
	out := make(map[int32]time.Duration, len(pids))
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if errors.Is(err, os.ErrNotExist) {
			continue // it disconnected since the list
		}
		if err != nil {
			return nil, fmt.Errorf("backend %d: %w (is PostgreSQL on this machine?)", pid, err)
		}
		if out[pid], err = statCPU(b); err != nil {
			return nil, fmt.Errorf("backend %d: %w", pid, err)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no backend of this database is readable in /proc (is PostgreSQL on this machine?)")
	}
	return out, nil
}

// statCPU returns utime + stime from a /proc/<pid>/stat line, counting fields after the
// command name's last ')' (the name may hold spaces). Their unit is USER_HZ, which Linux
// fixes at 100 for user space.
func statCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	fields := strings.Fields(string(b[i+1:])) // state (field 3) … utime (14), stime (15)
	if len(fields) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the command name, want at least 13", len(fields))
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100, nil
}
