package rbee

import "fmt"

// Version is the build's version, set with
// -ldflags "-X github.com/rbee-dev/rbee.Version=...".
var Version = "0.1.0-dev"

// ProtocolVersion is the version of the hive protocol. It only goes up.
//
//	1 (2026-11-27): first version; worker contract /health + OpenAI endpoints.
const ProtocolVersion = 1

// Bytes formats a byte count for people: "1.5 GiB", "300 MiB", "12 KiB".
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
