//go:build (freebsd || linux || windows || darwin) && amd64

package ffi

const TrampolineSize = 32
