// Command rbee is the keeper: the command people and scripts run. `rbee
// infer` wakes the queen when it is down (or runs one in-process with
// --ephemeral), submits a job and streams it: tokens to stdout, narration to
// stderr, or every event as a JSON line with --json. `rbee queen
// serve|start|stop|status` manages the queen daemon.
//
// Exit codes are stable (see package rbee): 0 ok, 1 error, 2 bad flags, 3
// queen unavailable, 4 model/hive/device not found, 5 no room, 6 worker
// failed, 130 interrupted.
package main
