// Package agent is the hive agent's server side (cmd/rbee-hive): it serves
// the hive API (package hiveapi) on a unix socket, detects devices (NVML and
// the CPU), runs the VRAM checker's reservations, keeps the model and worker
// catalogs (SQLite), and supervises worker processes: start with the
// catalog's paths, wait until ready, proxy their token streams as rbee
// events, stop them after a keep-alive, notice crashes.
package agent
