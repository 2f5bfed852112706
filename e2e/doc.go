// Package e2e holds rbee's end-to-end tests: the real rbee binary, a queen
// daemon, the hive agent and rbee-worker processes on generated models, each
// test in its own RBEE_HOME with its own queen port, every process found and
// cleaned up by PID.
package e2e
