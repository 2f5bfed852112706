// Package watchdog bounds waits by silence rather than by total time: a
// context made by WithSilence ends when no progress has been reported for
// its bound, however long the work as a whole takes. Code that moves bytes
// or finishes steps calls Alive with its context; the report reaches every
// silence bound, and every hook, above it in the context chain.
//
// rbee uses it where a fixed deadline would fail honest work on a slow
// link: a job connecting to a hive whose agent is being uploaded keeps
// waiting while bytes flow, and fails as soon as they stop.
package watchdog
