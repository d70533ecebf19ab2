//go:build failpoints

package failpoint

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestHelperProcess is run by TestKillAtNthHit in a child process.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("FAILPOINT_HELPER") != "1" {
		t.Skip("helper for TestKillAtNthHit, run in a child process")
	}
	for range 5 {
		Hit("test/point")
	}
	os.Exit(0)
}

func TestKillAtNthHit(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "FAILPOINT_HELPER=1", EnvVar+"=test/point=kill@3;test/other=on")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the helper survived its kill failpoint; output:\n%s", out)
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the helper ended with %v, want SIGKILL; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "failpoint test/point: kill@3 (hit 3)") {
		t.Fatalf("no failpoint line in the helper's output:\n%s", out)
	}
}

func TestMalformedSpecExits(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "FAILPOINT_HELPER=1", EnvVar+"=test/point=kil")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("a malformed %s gave %v, want exit status 2; output:\n%s", EnvVar, err, out)
	}
}
