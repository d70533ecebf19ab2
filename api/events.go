package api

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/pulseboard/pulseboard/api/internal/authn"
	"github.com/pulseboard/pulseboard/api/internal/store"
	"github.com/pulseboard/pulseboard/pkg/apikey"
	"github.com/pulseboard/pulseboard/pkg/event"
	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// Page sizes.
const (
	compatEventsDefault = 20
	compatEventsMax     = 100
	eventsDefault       = 50
	eventsMax           = 1000
	alertsDefault       = 50
	alertsMax           = 200
)

var errInvalidAPIKey = newError(httperr.InvalidAPIKey, "Invalid API key")

// eventsByKey: GET /events?apiKey=… (compat): the project's newest events. The key is in
// the URL for the old clients' sake; it is never logged (the request log has no query).
func (s *Service) eventsByKey(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	key := q.Get("apiKey")
	if key == "" {
		return invalid("querystring must have required property 'apiKey'")
	}
	limit, err := queryInt(q, "limit", compatEventsDefault, 1, compatEventsMax)
	if err != nil {
		return err
	}
	typ, err := queryEventType(q)
	if err != nil {
		return err
	}
	labels, err := queryLabels(q)
	if err != nil {
		return err
	}
	if !apikey.Plausible(key) {
		return errInvalidAPIKey
	}
	projID, err := s.store.ProjectIDByKeyHash(r.Context(), apikey.HashOf(key))
	if errors.Is(err, store.ErrNotFound) {
		return errInvalidAPIKey
	}
	if err != nil {
		return err
	}
	// No cursor in this shape: past the byte budget the list is just shorter.
	out, _, _, err := s.appendEventPage(r.Context(), []byte(`{"success":true,"data":`), projID,
		store.EventQuery{Type: typ, Labels: labels, Limit: limit}, limit)
	if err != nil {
		return err
	}
	writeBody(w, http.StatusOK, append(out, '}'))
	return nil
}

// queryLabels reads the label filters (pkg/event's field table: release, environment,
// sessionId, userId): exact matches, combined with the other filters; an empty parameter
// is no filter, as for name. A value no event can carry is a 400 naming the parameter.
func queryLabels(q url.Values) (event.Labels, error) {
	ls, err := event.LabelsFromQuery(q.Get)
	if err != nil {
		return ls, invalid(err.Message)
	}
	return ls, nil
}

// defaultMaxResponseBytes is API_MAX_RESPONSE_BYTES's default.
const defaultMaxResponseBytes = 4 << 20

// responseTailReserve is room kept for what follows the event array in an answer
// (`],"nextCursor":"<32 characters>"}`).
const responseTailReserve = 64

// appendEventPage appends to dst, as a JSON array, the events q selects (newest first),
// encoding each as it is read: at most limit, and never one that would take the answer
// past API_MAX_RESPONSE_BYTES, except the first, which is always answered whole (an
// event is at most 64 KiB as sent; a row stored before the ingestor bounded number
// literals can render larger, and is then answered alone). The answer is thus bounded
// by the budget plus one event; the rows are never all held at once. more reports that
// the project has events past the last one appended (whose position is last). q.Limit
// is set to limit+1 (the extra row tells whether there is more).
func (s *Service) appendEventPage(ctx context.Context, dst []byte, projID uuid.UUID, q store.EventQuery, limit int) (out []byte, more bool, last store.Cursor, err error) {
	budget := int(s.cfg.MaxResponseBytes)
	if budget <= 0 {
		budget = defaultMaxResponseBytes
	}
	budget -= responseTailReserve
	dst = append(dst, '[')
	n := 0
	var enc event.Encoder
	q.Limit = limit + 1
	err = s.store.EachEvent(ctx, projID, q, func(e *event.Event) error {
		if n == limit {
			more = true
			return store.ErrStop
		}
		mark := len(dst)
		if n > 0 {
			dst = append(dst, ',')
		}
		dst = enc.AppendJSON(dst, e)
		if n > 0 && len(dst) > budget {
			dst = dst[:mark]
			more = true
			return store.ErrStop
		}
		n++
		last = store.Cursor{Time: e.ReceivedAt, ID: e.ID}
		return nil
	})
	if err != nil {
		return nil, false, last, err
	}
	return append(dst, ']'), more, last, nil
}

// Cursors are opaque to clients: base64url of the position's time (Unix µs) and id.
func encodeCursor(t time.Time, id uuid.UUID) string {
	var b [24]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixMicro()))
	copy(b[8:], id[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func decodeCursor(r *http.Request) (*store.Cursor, error) {
	v := r.URL.Query().Get("cursor")
	if v == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil || len(b) != 24 {
		return nil, invalid("querystring/cursor is not a cursor returned by this endpoint")
	}
	// Any 24 bytes decode, but only times Postgres stores (those of events) can come
	// from this endpoint; others would fail the query ("timestamp out of range": a 500)
	// or wrap around in the driver.
	t := time.UnixMicro(int64(binary.BigEndian.Uint64(b[:8]))).UTC()
	if y := t.Year(); y < 1 || y > 9999 {
		return nil, invalid("querystring/cursor is not a cursor returned by this endpoint")
	}
	id, _ := uuid.FromBytes(b[8:])
	return &store.Cursor{Time: t, ID: id}, nil
}

// projectEvents: GET /projects/{id}/events: filters and keyset pagination on
// (receivedAt, id), newest first. since/until bound receivedAt: [since, until).
func (s *Service) projectEvents(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	eq := store.EventQuery{Name: q.Get("name")}
	if eq.Limit, err = queryInt(q, "limit", eventsDefault, 1, eventsMax); err != nil {
		return err
	}
	if eq.Type, err = queryEventType(q); err != nil {
		return err
	}
	if eq.Labels, err = queryLabels(q); err != nil {
		return err
	}
	if eq.Since, err = queryTime(q, "since"); err != nil {
		return err
	}
	if eq.Until, err = queryTime(q, "until"); err != nil {
		return err
	}
	if eq.After, err = decodeCursor(r); err != nil {
		return err
	}
	if err := s.store.CheckOwner(r.Context(), p.UserID, id); err != nil {
		return err
	}
	// Past limit or the byte budget, the page is shorter and nextCursor resumes it.
	// writePage's shape, built in the one bounded buffer.
	out, more, last, err := s.appendEventPage(r.Context(), []byte(`{"success":true,"data":`), id, eq, eq.Limit)
	if err != nil {
		return err
	}
	out = append(out, `,"nextCursor":`...)
	if more {
		out = event.AppendString(out, encodeCursor(last.Time, last.ID))
	} else {
		out = append(out, "null"...)
	}
	writeBody(w, http.StatusOK, append(out, '}'))
	return nil
}

var errEventNotFound = newError(httperr.NotFound, "Event not found")

// projectEvent: GET /projects/{id}/events/{eventId}: one event of the project.
func (s *Service) projectEvent(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	eventID, err := uuid.Parse(r.PathValue("eventId"))
	if err != nil {
		return errEventNotFound
	}
	if err := s.store.CheckOwner(r.Context(), p.UserID, id); err != nil {
		return err
	}
	ev, err := s.store.Event(r.Context(), id, eventID)
	if errors.Is(err, store.ErrEventNotFound) {
		return errEventNotFound
	}
	if err != nil {
		return err
	}
	out := ev.AppendJSON([]byte(`{"success":true,"data":`))
	writeBody(w, http.StatusOK, append(out, '}'))
	return nil
}

// Top error names: the default range, the most names answered, and the most errors read.
const (
	topErrorsDefaultRange = 24 * time.Hour
	topErrorsDefault      = 10
	topErrorsMax          = 50
	topErrorsMaxRows      = 100_000
)

type nameCountJSON struct {
	Name  string `json:"name"`
	Count int64  `json:"count"`
}

type topErrorsJSON struct {
	Since    jsonTime        `json:"since"`
	Until    jsonTime        `json:"until"`
	Names    []nameCountJSON `json:"names"`
	Counted  int64           `json:"counted"`
	Complete bool            `json:"complete"`
}

// topErrors: GET /projects/{id}/stats/errors: the most frequent error names received in
// [since, until) (default: the last 24 hours). At most topErrorsMaxRows errors are read,
// the latest first: complete says whether that was all of them.
func (s *Service) topErrors(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit, err := queryInt(q, "limit", topErrorsDefault, 1, topErrorsMax)
	if err != nil {
		return err
	}
	start, end, err := s.queryRange(q, topErrorsDefaultRange, 0)
	if err != nil {
		return err
	}
	if err := s.store.CheckOwner(r.Context(), p.UserID, id); err != nil {
		return err
	}
	names, counted, err := s.store.TopErrorNames(r.Context(), id, start, end, limit, topErrorsMaxRows)
	if err != nil {
		return err
	}
	out := topErrorsJSON{Since: jsonTime(start), Until: jsonTime(end), Names: make([]nameCountJSON, len(names)),
		Counted: counted, Complete: counted < topErrorsMaxRows}
	for i, n := range names {
		out.Names[i] = nameCountJSON{Name: n.Name, Count: n.Count}
	}
	return writeData(w, http.StatusOK, out)
}

// queryRange reads since and until: until defaults to now, since to defaultRange before
// until, and since is truncated to a multiple of align (UTC-aligned buckets) when align
// is positive. until must come after since.
func (s *Service) queryRange(q url.Values, defaultRange, align time.Duration) (start, end time.Time, err error) {
	since, err := queryTime(q, "since")
	if err != nil {
		return start, end, err
	}
	until, err := queryTime(q, "until")
	if err != nil {
		return start, end, err
	}
	end = s.now().UTC()
	if until != nil {
		end = *until
	}
	start = end.Add(-defaultRange)
	if since != nil {
		start = *since
	}
	if align > 0 {
		start = start.UTC().Truncate(align) // Truncate works on absolute time: UTC-aligned
	}
	if !end.After(start) {
		return start, end, invalid("querystring/until must be later than querystring/since")
	}
	return start, end, nil
}

// Stats intervals and their default ranges.
var intervals = map[string]struct{ width, defaultRange time.Duration }{
	"1m": {time.Minute, time.Hour},
	"1h": {time.Hour, 24 * time.Hour},
	"1d": {24 * time.Hour, 30 * 24 * time.Hour},
}

// maxBuckets bounds a stats answer (a week of minutes).
const maxBuckets = 7 * 24 * 60

type bucketJSON struct {
	Bucket jsonTime `json:"bucket"`
	Error  int64    `json:"error"`
	Event  int64    `json:"event"`
	Metric int64    `json:"metric"`
}

type statsJSON struct {
	Interval string       `json:"interval"`
	Series   []bucketJSON `json:"series"`
}

// stats: GET /projects/{id}/stats: stored events per type and bucket, from the rollups,
// every bucket of [since, until) present (zeros included), buckets aligned on UTC.
func (s *Service) stats(w http.ResponseWriter, r *http.Request, p authn.Principal) error {
	id, err := projectID(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	name := q.Get("interval")
	if name == "" {
		name = "1h"
	}
	iv, ok := intervals[name]
	if !ok {
		return invalid("querystring/interval must be equal to one of the allowed values (1m, 1h, 1d)")
	}
	start, end, err := s.queryRange(q, iv.defaultRange, iv.width)
	if err != nil {
		return err
	}
	// Compared before any arithmetic: Sub saturates at ~292 years (since=0001-01-01) and
	// adding a bucket to that wrapped around to a negative count (a 500).
	span := end.Sub(start)
	if span > maxBuckets*iv.width {
		return invalid("the range holds more than " + strconv.Itoa(maxBuckets) + " buckets of " + name + "; narrow since/until or use a wider interval")
	}
	n := int((span + iv.width - 1) / iv.width)
	if err := s.store.CheckOwner(r.Context(), p.UserID, id); err != nil {
		return err
	}
	rows, err := s.store.Stats(r.Context(), id, iv.width, start, end)
	if err != nil {
		return err
	}
	series := make([]bucketJSON, n)
	for i := range series {
		series[i].Bucket = jsonTime(start.Add(time.Duration(i) * iv.width))
	}
	for _, b := range rows {
		i := int(b.Start.Sub(start) / iv.width)
		if i >= 0 && i < n {
			series[i].Error, series[i].Event, series[i].Metric = b.Error, b.Event, b.Metric
		}
	}
	return writeData(w, http.StatusOK, statsJSON{Interval: name, Series: series})
}
