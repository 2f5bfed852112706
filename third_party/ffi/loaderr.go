package ffi

// loadErr records why libffi could not be loaded or lacked a symbol.
//
// rbee patch: upstream panics in init when libffi is missing, which kills the
// process with a goroutine dump before main can say what is wrong. rbee's
// worker calls LoadError first and reports a clear message instead.
var loadErr error

// LoadError reports whether libffi was loaded at init. When it returns an
// error, no other function of this package may be called.
func LoadError() error { return loadErr }
