package e2e

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// procField reads a "Name: value" field of /proc/PID/FILE as a number.
func procField(b *testing.B, pid int, file, name string) int64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), file))
	if err != nil {
		b.Fatal(err)
	}
	for l := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	b.Fatalf("no %s in /proc/%d/%s", name, pid, file)
	return 0
}

// busySeconds is the CPU time this machine spent so far, all processes.
func busySeconds(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])[1:]
	var busy int64
	for i, v := range f {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // not idle, not iowait
			busy += n
		}
	}
	return float64(busy) / 100 // USER_HZ
}

// BenchmarkScale: `rbee up` on RBEE_BENCH_HOSTS fresh sshd hosts (default
// 50) on this machine, cold then warm, `rbee ps` across them, the queen's
// peak RSS and what it wrote per host (its sockets: the push), and when
// each host finished within the cold up (a staircase is a wide spread).
// The hosts get the engine a user gets: the pinned npm package, which the
// queen fetches (here from the tarball make engine cached) and prepares.
// make bench-scale runs it; it is not part of make test.
func BenchmarkScale(b *testing.B) {
	n := 50
	if v := os.Getenv("RBEE_BENCH_HOSTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatalf("RBEE_BENCH_HOSTS=%q: %v", v, err)
		}
	}
	for range b.N {
		hosts := sshtest.Start(b, n, sshtest.Options{})
		e := newEnv(b)
		var kh, inv strings.Builder
		for i, h := range hosts {
			kh.WriteString(readFile(b, h.KnownHosts))
			fmt.Fprintf(&inv, "[[hive]]\nname = \"h%d\"\nhost = %q\nuser = %q\nport = %d\nidentity = %q\n\n", i+1, strings.Split(h.Addr, ":")[0], h.User, h.Port, h.ClientKey)
		}
		writeFile(b, filepath.Join(e.home, "known_hosts"), kh.String())
		writeFile(b, filepath.Join(e.home, "inventory.toml"), inv.String())
		// A cold push compresses on its first host: not from the suite's
		// shared cache.
		e.vars = append(e.vars, "RBEE_INVENTORY="+filepath.Join(e.home, "inventory.toml"), "RBEE_KNOWN_HOSTS="+filepath.Join(e.home, "known_hosts"),
			"RBEE_PUSH_CACHE="+cmp.Or(os.Getenv("RBEE_BENCH_PUSH_CACHE"), filepath.Join(e.home, "push-cache")))
		// The engine a user gets: the pinned npm package the queen fetches
		// (here from its cached tarball) and prepares for the hosts.
		root, err := testenv.Root()
		if err != nil {
			b.Fatal(err)
		}
		archives, _ := filepath.Glob(filepath.Join(root, ".rbee-dev", "cache", "node-llama-cpp-linux-x64-*.tgz"))
		if len(archives) == 0 {
			b.Fatal("no engine archive in .rbee-dev/cache: run `make engine`")
		}
		e.vars = append(e.vars, "RBEE_ENGINE=", "RBEE_ENGINE_ARCHIVE="+archives[0])
		q := testenv.Start(b, bins.Rbee, e.vars, "queen", "serve")
		pid, err := waitQueen(e)
		if err != nil {
			b.Fatalf("%v\n%s", err, q.StderrText())
		}
		wrote := procField(b, pid, "io", "wchar")

		cpu0 := busySeconds(b)
		start := time.Now()
		cmd, out, errb := e.start("up")
		var done []time.Duration
		var lines []string
		for {
			l, err := out.ReadString('\n')
			if err != nil {
				break
			}
			if strings.HasPrefix(l, "h") && strings.Contains(l, ": ") {
				done = append(done, time.Since(start))
				lines = append(lines, strings.TrimSpace(l))
			}
		}
		if err := cmd.Wait(); err != nil {
			b.Fatalf("rbee up: %v\n%s", err, errb.String())
		}
		cold := time.Since(start)
		cpu := busySeconds(b) - cpu0
		b.Logf("rbee up, as hosts finished:\n%s", strings.Join(lines, "\n"))
		if len(done) != n {
			b.Fatalf("rbee up reported %d hosts of %d", len(done), n)
		}
		perHost := float64(procField(b, pid, "io", "wchar")-wrote) / float64(n)
		slices.Sort(done)

		var warm, ps []time.Duration
		for range 3 {
			start = time.Now()
			if r := e.rbee("up"); r.code != 0 {
				b.Fatalf("warm rbee up: exit %d\n%s", r.code, r.stderr)
			}
			warm = append(warm, time.Since(start))
			start = time.Now()
			if r := e.rbee("ps"); r.code != 0 {
				b.Fatalf("rbee ps: exit %d\n%s", r.code, r.stderr)
			}
			ps = append(ps, time.Since(start))
		}
		rss := procField(b, pid, "status", "VmHWM") // KiB
		b.Logf("%d hosts: cold up %s (%.0f CPU seconds on this machine; first host done %s, median %s, last %s), warm up %s, ps %s, queen peak RSS %d MiB, %.1f MiB written per host",
			n, cold.Round(time.Millisecond), cpu, done[0].Round(time.Millisecond), done[len(done)/2].Round(time.Millisecond), done[len(done)-1].Round(time.Millisecond),
			medianD(warm).Round(time.Millisecond), medianD(ps).Round(time.Millisecond), rss/1024, perHost/(1<<20))
		b.ReportMetric(cold.Seconds(), "cold_up_s")
		b.ReportMetric(cpu, "cold_up_cpu_s")
		b.ReportMetric((done[len(done)-1] - done[0]).Seconds(), "finish_spread_s")
		b.ReportMetric(medianD(warm).Seconds(), "warm_up_s")
		b.ReportMetric(medianD(ps).Seconds()*1000, "ps_ms")
		b.ReportMetric(float64(rss)/1024, "queen_peak_rss_MiB")
		b.ReportMetric(perHost/(1<<20), "MiB_per_host")
		b.ReportMetric(0, "ns/op")
		q.Stop(30 * time.Second)
	}
}
