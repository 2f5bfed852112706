package bundle

// BackendsOf names the backends of a list of library file names, for the
// tests of the naming rule.
var BackendsOf = backendsOf
