// Command rbee-hive is the hive agent. It is not meant to be run by people:
// the queen starts it (locally, or over SSH on remote hosts) and talks to it
// on its unix socket, ~/.rbee/run/hive.sock. It needs cgo for NVML
// (go-nvml); when NVML cannot initialise it reports the CPU only.
//
// It uses the standard flag package on purpose: the agent imports no CLI or
// TOML code (see deps_test.go).
package main
