// Package rbee holds the domain shared by rbee's binaries: the version, the
// hive protocol version, and the error codes that cross process boundaries.
// The keeper (cmd/rbee), the hive agent (cmd/rbee-hive) and the worker
// (cmd/rbee-worker) build on it; see DESIGN in docs/ for how they fit.
package rbee
