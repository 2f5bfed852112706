// Package queen is the orchestrator behind `rbee queen serve`: its
// configuration and lifecycle (the drain at Close), the control socket
// (owner only) and the TCP port (the front door, the token), and the
// keeper's jobs, streamed over SSE. It wires three rooms and owns none of
// their state: the hives are queen/fleet's, the OpenAI API queen/door's,
// models spread over hives queen/split's.
package queen
