// Package remote is rbee's SSH transport: one long-lived, keepalive-checked
// connection per host, authenticated by ssh-agent or key files and verified
// against known_hosts, with ~/.ssh/config applied (HostName, User, Port,
// IdentityFile, ProxyJump). On it run commands whose every argument is
// quoted, SFTP uploads that land atomically, and streams to the hive
// agent's unix socket, by forwarding or, where the server forbids it,
// through a bridge process.
package remote
