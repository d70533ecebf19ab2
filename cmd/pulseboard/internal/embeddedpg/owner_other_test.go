//go:build !linux

package embeddedpg

import "testing"

// ownerUID is only called as root, which this package supports on Linux only.
func ownerUID(t *testing.T, _ string) int {
	t.Fatal("ownerUID: Linux only")
	return -1
}
