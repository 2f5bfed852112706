package doctor

import (
	"bufio"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/rbee-dev/rbee"
)

// probeScript prints one fact per line as key=value and changes nothing:
// it only reads (uname, os-release, the loader cache, test, df,
// nvidia-smi). It is a constant: nothing a user typed is ever part of a
// remote command. Libraries are looked up in the loader's order:
// LD_LIBRARY_PATH, the ld.so cache (entries of this machine's
// architecture whose file exists), then the default directories.
const probeScript = `
echo "os=$(uname -s)"
echo "machine=$(uname -m)"
sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | head -n 1 | tr -d '"' | sed 's/^/distro=/'
echo "libc=$( (getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>&1) | head -n 1)"
m=$(uname -m)
case $m in x86_64) tag=x86-64 ;; aarch64) tag=AArch64 ;; *) tag=$m ;; esac
cache=$( (/sbin/ldconfig -p || ldconfig -p) 2>/dev/null)
find_lib() {
	IFS=:
	for d in $LD_LIBRARY_PATH; do
		if [ -n "$d" ] && [ -e "$d/$1" ]; then unset IFS; echo "$2=$1 $d/$1"; return; fi
	done
	unset IFS
	for f in $(printf '%s\n' "$cache" | awk -v n="$1" -v t="$tag" '$1 == n && index($0, t) { print $NF }'); do
		if [ -e "$f" ]; then echo "$2=$1 $f"; return; fi
	done
	for d in "/lib/$m-linux-gnu" "/usr/lib/$m-linux-gnu" /lib64 /usr/lib64 /lib /usr/lib; do
		if [ -e "$d/$1" ]; then echo "$2=$1 $d/$1"; return; fi
	done
	echo "$2=$1"
}
for l in libffi.so.8 libstdc++.so.6 libgcc_s.so.1; do find_lib "$l" lib; done
for l in libcuda.so.1 libcudart.so.13 libcublas.so.13; do find_lib "$l" cuda; done
printf 'home=%s\n' "$HOME"
if [ -w "$HOME" ]; then echo home_writable=yes; else echo home_writable=no; fi
if [ -e "$HOME/.rbee" ]; then if [ -w "$HOME/.rbee" ]; then echo rbee_writable=yes; else echo rbee_writable=no; fi; fi
echo "home_owner=$(stat -c %U "$HOME" 2>/dev/null)"
echo "user=$(id -un)"
echo "free_kb=$(df -Pk "$HOME" 2>/dev/null | awk 'NR == 2 { print $4 }')"
for d in "$HOME"/.rbee/hive/*/; do if [ -d "$d" ]; then echo "installed=$(basename "$d")"; fi; done
if [ -S "$HOME/.rbee/run/hive.sock" ]; then echo agent_socket=yes; fi
if command -v nvidia-smi >/dev/null 2>&1; then
	out=$(nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader,nounits 2>&1)
	rc=$?
	printf '%s\n' "$out" | head -n 64 | sed 's/^/nvidia_smi_line=/'
	echo "nvidia_smi=$rc"
else
	echo nvidia_smi=none
fi
if [ -r /proc/driver/nvidia/version ]; then head -n 1 /proc/driver/nvidia/version | sed 's/^/nvidia_proc=/'; fi
echo end=ok
`

// probe is the script's answer: every value of each key, in order.
type probe map[string][]string

func parseProbe(out []byte) probe {
	p := probe{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok {
			p[k] = append(p[k], strings.TrimSpace(v))
		}
	}
	return p
}

func (p probe) get(k string) string {
	if vs := p[k]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// libs parses "name path" values; a missing library has no path.
func (p probe) libs(k string) []Lib {
	libs := []Lib{}
	for _, v := range p[k] {
		name, path, _ := strings.Cut(v, " ")
		libs = append(libs, Lib{Name: name, Path: path})
	}
	return libs
}

// Thresholds of the disk check: the agent, worker and an engine bundle
// take about 100 MB; models take the rest.
const (
	minFree  = 1 << 30
	warnFree = 4 << 30
)

// cudaDriverMin is the oldest driver CUDA 13 runs on, the runtime the
// pinned CUDA bundle links (libcudart.so.13).
const cudaDriverMin = 580

var (
	glibcRe  = regexp.MustCompile(`(?i)(?:glibc|gnu libc|libc)\D*(\d+\.\d+)`)
	driverRe = regexp.MustCompile(`(\d+)\.\d+(?:\.\d+)?`)
)

// evaluate turns the probe's facts into the platform, library, disk,
// home, GPU, CUDA and installed checks.
func evaluate(rep *Report, p probe, opt Options) {
	f := &rep.Facts
	if p.get("end") != "ok" {
		rep.add(checkProbe, Warn, "", "the probe's answer was cut short; some checks may be wrong")
	}
	f.OS = strings.ToLower(p.get("os"))
	f.Machine = p.get("machine")
	f.Arch = goArch(f.Machine)
	f.Distro = p.get("distro")
	platform := f.OS + "/" + f.Arch
	if f.OS == "linux" && (f.Arch == "amd64" || f.Arch == "arm64") {
		detail := platform
		if f.Distro != "" {
			detail += " (" + f.Distro + ")"
		}
		rep.add(checkPlatform, OK, "", "%s", detail)
	} else {
		rep.add(checkPlatform, Fail, "rbee's agent and engine are built for linux/amd64 and linux/arm64",
			"%s (uname: %s %s): no rbee build for it", platform, p.get("os"), f.Machine)
	}

	evalGlibc(rep, p.get("libc"), opt.Needs)
	evalLibs(rep, p)
	evalDisk(rep, p)
	evalHome(rep, p)
	evalGPU(rep, p)

	f.Installed = append(f.Installed, p["installed"]...)
	switch {
	case len(f.Installed) == 0:
		rep.add(checkInstalled, OK, "", "no rbee installed yet (~/.rbee/hive/ is empty or absent)")
	case opt.Version != "" && !slices.Contains(f.Installed, opt.Version):
		rep.add(checkInstalled, OK, "", "%s in ~/.rbee/hive/; this rbee (%s) is not there yet and would be uploaded",
			strings.Join(f.Installed, ", "), opt.Version)
	default:
		rep.add(checkInstalled, OK, "", "%s in ~/.rbee/hive/", strings.Join(f.Installed, ", "))
	}
}

func goArch(machine string) string {
	switch machine {
	case "x86_64", "amd64":
		return "amd64"
	case "aarch64", "arm64":
		return "arm64"
	}
	return machine
}

func evalGlibc(rep *Report, libc string, need Needs) {
	f := &rep.Facts
	f.Libc = libc
	if strings.Contains(strings.ToLower(libc), "musl") {
		f.Libc = "musl"
		rep.add(checkGlibc, Fail, "use a glibc distribution (Debian, Ubuntu, Fedora, RHEL…); musl (Alpine) is not supported",
			"musl libc: the engine needs glibc %s or later (%s)", need.Glibc, need.from())
		return
	}
	m := glibcRe.FindStringSubmatch(libc)
	if m == nil {
		rep.add(checkGlibc, Warn, "", "could not read the C library's version (%q); the engine needs glibc %s or later", libc, need.Glibc)
		return
	}
	f.Glibc = m[1]
	if versionLess(f.Glibc, need.Glibc) {
		rep.add(checkGlibc, Fail, fmt.Sprintf("upgrade the OS to one with glibc %s or later (Debian 12, Ubuntu 22.04, RHEL 9 have it)", need.Glibc),
			"glibc %s, older than the %s the agent and engine need (%s)", f.Glibc, need.Glibc, need.from())
		return
	}
	rep.add(checkGlibc, OK, "", "glibc %s (need %s or later: %s)", f.Glibc, need.Glibc, need.from())
}

// versionLess compares dotted numbers: "2.9" < "2.34".
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// libHints says how to install what the engine loads.
var libHints = map[string]string{
	"libffi.so.8":    "libffi8 (Debian/Ubuntu: apt-get install libffi8; Fedora/RHEL: dnf install libffi)",
	"libstdc++.so.6": "libstdc++6 (Debian/Ubuntu: apt-get install libstdc++6; Fedora/RHEL: dnf install libstdc++)",
	"libgcc_s.so.1":  "libgcc-s1 (Debian/Ubuntu: apt-get install libgcc-s1; Fedora/RHEL: dnf install libgcc)",
}

func evalLibs(rep *Report, p probe) {
	f := &rep.Facts
	f.Libraries = p.libs("lib")
	var found, missing, hints []string
	for _, l := range f.Libraries {
		if l.Path == "" {
			missing = append(missing, l.Name)
			hints = append(hints, libHints[l.Name])
		} else {
			found = append(found, l.Name+" ("+l.Path+")")
		}
	}
	switch {
	case len(f.Libraries) == 0:
		rep.add(checkLibs, Warn, "", "the probe did not look for libraries")
	case len(missing) > 0:
		rep.add(checkLibs, Fail, "install "+strings.Join(hints, "; "),
			"missing %s: the engine cannot load without it; found %s", strings.Join(missing, ", "), orNone(found))
	default:
		rep.add(checkLibs, OK, "", "%s", strings.Join(found, ", "))
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func evalDisk(rep *Report, p probe) {
	kb, err := strconv.ParseUint(p.get("free_kb"), 10, 64)
	if err != nil {
		rep.add(checkDisk, Warn, "", "could not read the free space of the home (df said %q)", p.get("free_kb"))
		return
	}
	free := kb * 1024
	rep.Facts.FreeBytes = free
	switch {
	case free < minFree:
		rep.add(checkDisk, Fail, "free space in the home's file system: rbee needs about 100 MB for itself plus room for models",
			"%s free in the home's file system, under %s", rbee.Bytes(free), rbee.Bytes(minFree))
	case free < warnFree:
		rep.add(checkDisk, Warn, "models take gigabytes: free space in the home's file system",
			"%s free in the home's file system: room for rbee, little for models", rbee.Bytes(free))
	default:
		rep.add(checkDisk, OK, "", "%s free in the home's file system", rbee.Bytes(free))
	}
}

func evalHome(rep *Report, p probe) {
	f := &rep.Facts
	f.Home = p.get("home")
	user, owner := p.get("user"), p.get("home_owner")
	f.HomeWritable = p.get("home_writable") == "yes"
	rbeeOK := p.get("rbee_writable") != "no"
	switch {
	case f.Home == "" || !strings.HasPrefix(f.Home, "/"):
		rep.add(checkHome, Fail, "give the user a home directory in /etc/passwd", "no home directory (HOME=%q)", f.Home)
	case !f.HomeWritable:
		rep.add(checkHome, Fail, fmt.Sprintf("rbee installs into ~/.rbee: make %s writable by %s (chown %s %s; chmod u+w %s)", f.Home, user, user, f.Home, f.Home),
			"%s is not writable by %s (owner %s)", f.Home, user, owner)
	case !rbeeOK:
		f.HomeWritable = false
		rep.add(checkHome, Fail, fmt.Sprintf("chown -R %s %s/.rbee", user, f.Home),
			"%s/.rbee exists but is not writable by %s", f.Home, user)
	default:
		rep.add(checkHome, OK, "", "%s is writable by %s", f.Home, user)
	}
}

func evalGPU(rep *Report, p probe) {
	f := &rep.Facts
	smi := p.get("nvidia_smi")
	if m := driverRe.FindString(p.get("nvidia_proc")); m != "" {
		f.Driver = m
	}
	switch {
	case smi == "none" && f.Driver == "":
		rep.add(checkGPU, Skip, "", "no NVIDIA driver (no nvidia-smi, no /proc/driver/nvidia): CPU only")
	case smi == "none":
		rep.add(checkGPU, Warn, "install the driver's utilities (nvidia-utils) so GPUs can be listed",
			"NVIDIA driver %s loaded, but no nvidia-smi to list GPUs", f.Driver)
	case smi != "0":
		rep.add(checkGPU, Warn, "check the driver: nvidia-smi must work for rbee to use the GPUs (a reboot after a driver upgrade often fixes it)",
			"nvidia-smi failed (exit %s): %s", smi, strings.Join(p["nvidia_smi_line"], " "))
	default:
		var desc []string
		for _, line := range p["nvidia_smi_line"] {
			g, drv, ok := parseGPU(line)
			if !ok {
				continue
			}
			f.GPUs = append(f.GPUs, g)
			f.Driver = drv
			desc = append(desc, fmt.Sprintf("%d %s (%d MiB)", g.Index, g.Name, g.MemoryMB))
		}
		if len(f.GPUs) == 0 {
			rep.add(checkGPU, Warn, "", "nvidia-smi lists no GPU (driver %s)", orNone([]string{f.Driver}))
			break
		}
		rep.add(checkGPU, OK, "", "driver %s, %d GPU(s): %s", f.Driver, len(f.GPUs), strings.Join(desc, "; "))
	}
	evalCUDA(rep, p)
}

// parseGPU reads "0, NVIDIA H200, 143771, 580.65.06".
func parseGPU(line string) (GPU, string, bool) {
	parts := strings.Split(line, ",")
	if len(parts) != 4 {
		return GPU{}, "", false
	}
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	idx, err1 := strconv.Atoi(parts[0])
	mem, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil {
		return GPU{}, "", false
	}
	return GPU{Index: idx, Name: parts[1], MemoryMB: mem}, parts[3], true
}

func evalCUDA(rep *Report, p probe) {
	f := &rep.Facts
	f.CUDARuntime = p.libs("cuda")
	if len(f.GPUs) == 0 {
		rep.add(checkCUDA, Skip, "", "no NVIDIA GPU: the CPU bundle will be used")
		return
	}
	var missing []string
	for _, l := range f.CUDARuntime {
		if l.Path == "" {
			missing = append(missing, l.Name)
		}
	}
	major := 0
	if m := driverRe.FindStringSubmatch(f.Driver); m != nil {
		major, _ = strconv.Atoi(m[1])
	}
	switch {
	case major < cudaDriverMin:
		rep.add(checkCUDA, Warn, fmt.Sprintf("upgrade the NVIDIA driver to %d or later for the CUDA bundle", cudaDriverMin),
			"driver %s is older than the %d that CUDA 13 (the CUDA bundle's runtime) needs: the CPU bundle will be used", orNone([]string{f.Driver}), cudaDriverMin)
	case len(missing) > 0:
		rep.add(checkCUDA, Warn, "install the CUDA 13 runtime and cuBLAS (Debian/Ubuntu with NVIDIA's repository: apt-get install cuda-cudart-13-0 libcublas-13-0) "+
			"and make the loader find them (ldconfig, or LD_LIBRARY_PATH=/usr/local/cuda/lib64)",
			"missing %s: the CUDA bundle cannot load, the CPU bundle will be used", strings.Join(missing, ", "))
	default:
		rep.add(checkCUDA, OK, "", "CUDA 13 runtime present (%s): the CUDA bundle can run", strings.Join(libNames(f.CUDARuntime), ", "))
	}
}

func libNames(ls []Lib) []string {
	var s []string
	for _, l := range ls {
		s = append(s, l.Name)
	}
	return s
}
