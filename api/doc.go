// Package api will hold PulseBoard's query API: auth, projects, event queries and stats,
// and live WebSocket/SSE streams (see the API issue). The module exists now so that the
// workspace layout of ARCHITECTURE.md is complete; it has no code yet and the all-in-one
// does not start it.
package api
