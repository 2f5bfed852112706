package rbee

// Version is the build's version, set with
// -ldflags "-X github.com/rbee-dev/rbee.Version=...".
var Version = "0.1.0-dev"

// ProtocolVersion is the version of the hive protocol. It only goes up.
//
//	1 (2026-11-27): first version; worker contract /health + OpenAI endpoints.
const ProtocolVersion = 1
