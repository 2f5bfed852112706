// Package catalog keeps what rbee must remember across restarts in SQLite files:
// the queen's hive catalog (hives, their devices and capabilities) and each
// hive's model and worker catalogs (models, worker binaries and engine bundles).
// Schemas are embedded migrations, files run in WAL mode, and a corrupt or
// too-new file is reported with ErrCorrupt or ErrTooNew, never recreated.
package catalog
