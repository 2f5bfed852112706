// Package doctor checks a machine before rbee touches it: this machine, or a
// host reached over SSH, where it runs one constant, read-only probe script
// and never installs or writes anything. It reports each check (reach, host
// key, login, platform, glibc against what the agent and engine need,
// libraries, disk, home, forwarding, GPUs, CUDA runtime, installed rbee
// versions, engine bundles against their manifests, the agent's last error)
// with a verdict, a detail and a hint; `rbee doctor` prints it.
package doctor
