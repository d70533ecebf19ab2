//go:build !failpoints

package failpoint

// Hit marks the failpoint name. Without the failpoints build tag it does nothing.
func Hit(string) {}

// Enabled reports whether the switch name is on. Without the failpoints build tag it is
// always false, so code guarded by it is dead and removed by the compiler.
func Enabled(string) bool { return false }

// Compiled reports whether failpoints are compiled into this binary.
const Compiled = false
