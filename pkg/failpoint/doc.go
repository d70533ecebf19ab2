// Package failpoint lets the process-level fault tests (the chaos module) stop a service
// at an exact place in its code, for example between the consumer's database commit and
// its offset commit, and switch on deliberately unsafe behaviour for the negative
// controls that prove those tests can see loss.
//
// Failpoints exist only in binaries built with the build tag "failpoints"
// (go build -tags failpoints). In every other build Hit and Enabled are empty functions
// the compiler inlines away, so production binaries carry neither the code nor the
// environment variable.
//
// # Configuration
//
// A failpoints build reads PULSEBOARD_FAILPOINTS once, at the first Hit or Enabled:
// entries separated by ";", each "name=action":
//
//	kill        SIGKILL this process at the first hit
//	kill@N      SIGKILL this process at the Nth hit (1-based)
//	sleep(D)    sleep D (a time.Duration) at every hit
//	sleep(D)@N  sleep D at the Nth hit only
//	on          Enabled(name) reports true (switches such as the unsafe modes)
//
// for example PULSEBOARD_FAILPOINTS="consumer/after-db-commit=kill@3". Before acting, a
// failpoint writes one line to standard error, "failpoint NAME: ACTION (hit N)", so a
// test can tell that the process died where it meant it to, not elsewhere. A malformed
// specification makes the first Hit or Enabled exit the process with status 2, so a typo
// cannot silently turn a fault test into a test of nothing.
//
// # Names
//
// Each service documents its failpoints where it calls Hit. The consumer's are
// consumer/after-fetch, consumer/mid-copy, consumer/before-db-commit,
// consumer/after-db-commit and consumer/after-offset-commit, plus the switch
// consumer/unsafe-commit-before-store; the ingestor's is ingestor/after-produce-ack, plus
// the switch ingestor/unsafe-acks-1 (acks=1 instead of all in-sync replicas); the
// alerter's are alerter/before-smtp, alerter/after-smtp-before-record,
// alerter/digest-after-create, alerter/retention-after-detach and
// alerter/retention-after-drop.
package failpoint

// EnvVar is the environment variable a failpoints build reads.
const EnvVar = "PULSEBOARD_FAILPOINTS"
