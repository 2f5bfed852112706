// Package agent is the hive agent's server side (cmd/rbee-hive): it serves
// the hive API (package hiveapi) on a unix socket, detects devices (NVML and
// the CPU), runs the VRAM checker's reservations, keeps the model and worker
// catalogs (SQLite), and runs workers through package supervisor: it starts
// them with the catalog's paths and proxies their token streams as rbee
// events.
package agent
