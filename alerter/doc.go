// Package alerter will hold PulseBoard's alerting service: error-threshold alerts by
// email, daily digests and retention (see the alerter issue). The module exists now so
// that the workspace layout of ARCHITECTURE.md is complete; it has no code yet and the
// all-in-one does not start it.
package alerter
