// Package testenv finds and builds what rbee's tests run on: the repository
// root, the engine bundle (`make engine`), generated models, and the rbee
// binaries built once per test binary. It is imported by tests only.
package testenv
