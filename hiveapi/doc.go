// Package hiveapi is the hive agent's HTTP API as the queen sees it: the
// request and response types and a client that reaches the agent through
// any dialer (its unix socket locally, an SSH tunnel for remote hosts). It
// is pure Go so the keeper binary can import it without cgo or NVML.
package hiveapi
