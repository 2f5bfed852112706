module github.com/rbee-dev/rbee

go 1.26.0

require (
	github.com/alecthomas/kong v1.17.0
	github.com/hybridgroup/yzma v1.28.0
	github.com/jupiterrider/ffi v0.7.0
)

require (
	github.com/ebitengine/purego v0.10.0 // indirect
	golang.org/x/sys v0.42.0 // indirect
)

replace github.com/jupiterrider/ffi => ./third_party/ffi
