// Package poll retries a check with exponential backoff, bounded in attempts
// and in time — the seed's polling crate. The keeper polls the queen's
// /health with it; the queen polls a hive agent it has just started.
package poll
