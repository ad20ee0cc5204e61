package chunkstore

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// cpuRoom tells the automatic compressions whether the host's CPUs have
// room for zstd: whether, over the last sampling window, at least one
// whole CPU was idle across the host. (Not less: where vCPUs are threads
// of shared cores, as on small cloud machines, a busy sibling leaves the
// idle one little to give; on 2 vCPUs here, two zstd streams run only
// 1.15x one.) It reads /proc/stat at most once a window, so a chunk costs
// a clock read; on a hypervisor host the guests' load counts, so a backup
// takes the slower codec's extra CPU only from what is idle. Where
// /proc/stat cannot be read, there is always room (the count of busy
// compressors still bounds zstd).
type cpuRoom struct {
	window time.Duration
	read   func() (idle, total uint64, ok bool)

	mu          sync.Mutex
	at          time.Time
	idle, total uint64
	room        bool
}

// cpus is GOMAXPROCS as the process started (the CPUs it may use, after
// the GOMAXPROCS variable and the cgroup's quota), read when the package
// is initialised: before main, which raises GOMAXPROCS past it for
// goroutines back from I/O (see cmd/volback), can change it.
var cpus = runtime.GOMAXPROCS(0)

// CPUs is the number of CPUs the process may keep busy: at most this many
// chunks compress at once, and the default parallelism of a copy.
func CPUs() int { return cpus }

// hostCPU is the one meter of this process: every repository shares it.
var hostCPU = &cpuRoom{window: 100 * time.Millisecond, read: procStat, room: true}

func (c *cpuRoom) hasRoom() bool {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.at) < c.window {
		return c.room
	}
	idle, total, ok := c.read()
	if !ok {
		c.at, c.room = now, true
		return true
	}
	if !c.at.IsZero() && total > c.total {
		// The counters sum over the CPUs: one CPU idle is an idle
		// share of the window's ticks of at least 1/cpus.
		dIdle, dTotal := idle-c.idle, total-c.total
		c.room = dIdle*uint64(hostCPUs()) >= dTotal
	}
	c.at, c.idle, c.total = now, idle, total
	return c.room
}

// hostCPUs is the number of CPUs /proc/stat sums over.
var hostCPUs = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 1
	}
	n := 0
	for line := range bytes.Lines(b) {
		if len(line) > 3 && string(line[:3]) == "cpu" && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return max(1, n)
})

// procStat returns the host's idle (idle + iowait) and total CPU time from
// the first line of /proc/stat, in ticks.
func procStat() (idle, total uint64, ok bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	var buf [512]byte
	n, _ := f.Read(buf[:])
	return parseProcStat(buf[:n])
}

// parseProcStat reads the aggregate "cpu" line: user nice system idle
// iowait irq softirq steal (guest time is already in user and nice).
func parseProcStat(b []byte) (idle, total uint64, ok bool) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fields := bytes.Fields(line)
	if len(fields) < 5 || string(fields[0]) != "cpu" {
		return 0, 0, false
	}
	for i, f := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(string(f), 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total, true
}
