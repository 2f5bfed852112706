// Package proc is rbee's process plumbing, written once: start a program
// with its output appended to a log file, learn when it exits, stop it
// with a grace period then a kill, and read the end of its log for error
// messages; Attach takes over a process an earlier one started (the hive's
// workers after an upgrade). The queen, the keeper and the hive's worker
// supervisor use it.
package proc
