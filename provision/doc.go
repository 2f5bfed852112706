// Package provision puts rbee onto a host over SSH, in phases: probe the
// host (OS, CPU, libc, libffi, disk, home), pick the agent build for it,
// upload the agent, the worker and the engine bundle (temporary name,
// checksum, rename into a versioned path), replace an older agent gracefully
// (its workers are handed over, not killed), start the agent detached, and
// handshake. An agent of the right version already running is used as is.
package provision
