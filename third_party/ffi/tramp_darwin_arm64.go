//go:build darwin && arm64

package ffi

const TrampolineSize = 16
