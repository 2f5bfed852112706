// Package queen is the orchestrator behind `rbee queen serve`: HTTP on
// loopback, /health, and a job API whose events stream over SSE. It keeps
// the hive catalog (SQLite) and the hive and worker registries (RAM), wakes
// the local hive agent when it is down, asks the scheduler where a job runs,
// has the hive's VRAM checker admit it, and relays the hive's event stream
// to the keeper, narrating every step.
package queen
