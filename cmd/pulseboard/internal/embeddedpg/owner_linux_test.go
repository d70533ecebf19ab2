package embeddedpg

import (
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func ownerUID(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}
