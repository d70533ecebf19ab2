package live

import (
	"net/url"

	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// Label filters (issue 19 item 1). A stream may ask for only the events carrying given
// labels (pkg/event's field table: release, environment, sessionId, userId), by
// equality, as GET /projects/{id}/events filters: query parameters of the WebSocket and
// SSE requests, members of the Socket.IO "subscribe" object. The dispatcher reads a
// published event's labels once (event.PeekLabels), only for a topic with a filtered
// client, and skips the clients whose filter it does not match; the SSE replay filters
// in its queries. Skipped events are not missed: no resync is owed for them.

// filter is a client's label filter; "" matches any value. The zero filter matches
// every event.
type filter struct {
	labels event.Labels
	on     bool // some label is set
}

func newFilter(ls event.Labels) filter {
	f := filter{labels: ls}
	for _, v := range ls {
		f.on = f.on || v != ""
	}
	return f
}

// matches reports whether an event with labels ls (ok: they could be read) passes.
func (f *filter) matches(ls *event.Labels, ok bool) bool {
	if !f.on {
		return true
	}
	if !ok {
		return false
	}
	for l, v := range f.labels {
		if v != "" && ls[l] != v {
			return false
		}
	}
	return true
}

// filterFromQuery reads a stream request's label filters: parameters named as the
// labels' members; an empty one is no filter (as in the events API). A value no event
// can carry is refused with 400 VALIDATION_FAILED naming the parameter.
func filterFromQuery(q url.Values) (filter, *rejection) {
	ls, err := event.LabelsFromQuery(q.Get)
	if err != nil {
		return filter{}, &rejection{httperr.ValidationFailed, err.Message, rejectBadRequest, 0}
	}
	return newFilter(ls), nil
}
