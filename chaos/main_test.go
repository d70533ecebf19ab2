package chaos_test

import (
	"os"
	"testing"

	"github.com/pulseboard/pulseboard/chaos/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m.Run)) }
