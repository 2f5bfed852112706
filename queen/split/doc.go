// Package split runs one model across several hives with llama.cpp's RPC
// backend: the plan of each hive's share, the RPC servers' leases, the
// forwards that carry the RPC traffic inside SSH, and the split job from
// admission to teardown. It reaches the hives only through its Fleet
// interface; the main worker's stream goes back through the fleet's relay.
package split
