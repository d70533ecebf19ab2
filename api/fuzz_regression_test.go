package api_test

import (
	"testing"
)

// Found by FuzzEventsCursor: a cursor at the edges of time (any 24 bytes decoded) reached
// Postgres, which cannot hold such a time ("timestamp out of range"), and the events and
// alerts pages answered 500. A cursor this API never returned is the client's 400.
func TestCursorOutsideStorableTimesIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.newUser("Edges")
	pid := c.createProject("Edges")["id"].(string)
	for _, cur := range []string{
		"gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // the smallest time
		"wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // far before year 1
		"f_________AAAAAAAAAAAAAAAAAAAAAA", // the largest time
	} {
		for _, page := range []string{"events", "alerts"} {
			c.do("GET", "/projects/"+pid+"/"+page+"?cursor="+cur, nil).
				requireError(t, 400, "VALIDATION_FAILED", "querystring/cursor is not a cursor returned by this endpoint")
		}
	}
}
