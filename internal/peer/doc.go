// Package peer tells who is at the other end of a unix socket: the uid the
// kernel records for the peer (SO_PEERCRED). The queen's control socket,
// the hive agent's socket and the agent's RPC relays let only their owner
// (and root) through with it, whatever the socket's mode.
package peer
