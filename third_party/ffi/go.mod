module github.com/jupiterrider/ffi

go 1.18

require github.com/ebitengine/purego v0.10.0
