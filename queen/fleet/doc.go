// Package fleet is the queen's view of its hives: one SSH or local
// connection per hive (pool), snapshots of their devices, workers and
// models, the job's model parsed once (ModelSpec), planning and admission
// across hives, model pushes, copies and pulls, engine installs, and the
// hive administration routes (hive add/ls/rm/up, model pull, engines).
// The door and the split reach workers only through it: Candidates,
// Snapshots, Place, Conn and Relay are its named doors.
package fleet
