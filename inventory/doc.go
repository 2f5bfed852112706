// Package inventory reads and edits the user's list of hives: a TOML file
// (inventory.example.toml at the repository root documents every field).
// Problems are reported as ConfigErrors that name the file, line and field,
// and edits made through Add and Remove leave the rest of the file, comments
// included, exactly as the user wrote it.
package inventory
