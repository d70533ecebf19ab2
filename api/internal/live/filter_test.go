package live_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/event"
)

// labelled is a new event of the bundle's project with labels.
func (b *bundle) labelled(name string, ls event.Labels) event.Event {
	e := b.newEvent(name, `{}`)
	e.Labels = ls
	return e
}

// storeLabelled inserts e with its labels (what the consumer commits).
func (b *bundle) storeLabelled(t testing.TB, e event.Event) {
	t.Helper()
	var ls [event.NumLabels]*string
	for l := range ls {
		if v := e.Labels[l]; v != "" {
			ls[l] = &v
		}
	}
	_, err := b.pool.Exec(context.Background(), `
		INSERT INTO events (id, project_id, type, name, payload, "timestamp", received_at, release, environment, session_id, user_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		e.ID, e.ProjectID, e.Type, e.Name, string(e.Payload), e.Timestamp, e.ReceivedAt, ls[0], ls[1], ls[2], ls[3])
	require.NoError(t, err)
}

// Every transport takes the label filters (WebSocket and SSE in the query, Socket.IO in
// the subscribe object) and delivers only the matching events, in order, without a
// resync for the others; an unfiltered client of the same project gets everything.
func TestFilteredSubscriptions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	all := b.dialWS(t)
	ws := b.dialWSWith(t, b.wsURL(b.project.ID.String())+"?token="+b.token+"&sessionId=s1&environment=prod", nil)
	sse := b.openSSE(t, nil, "?token="+b.token+"&release=2.0")
	sio := b.eioOpen(t)
	status, _ := sio.post(`40{"token":"` + b.token + `"}`)
	require.Equal(t, http.StatusOK, status)
	sio.until(`40{"sid":`)
	sio.post(fmt.Sprintf(`42["subscribe",{"projectId":"%s","userId":"u \"1\"","release":null,"sessionId":""}]`, b.project.ID))
	require.Equal(t, fmt.Sprintf(`42["subscribed",{"projectId":"%s"}]`, b.project.ID), sio.until(`42["subscribed"`))

	events := []event.Event{
		b.labelled("none", event.Labels{}),
		b.labelled("s1-prod", event.Labels{"", "prod", "s1", ""}),
		b.labelled("s1-dev", event.Labels{"2.0", "dev", "s1", ""}),
		b.labelled("s2-prod", event.Labels{"1.0", "prod", "s2", `u "1"`}),
		b.labelled("rel2", event.Labels{"2.0", "", "", `u "1"`}),
		b.labelled("s1-prod-2", event.Labels{"1.0", "prod", "s1", "u2"}),
	}
	last := b.labelled("all", event.Labels{"2.0", "prod", "s1", `u "1"`}) // matches every filter
	var published []string
	for _, e := range append(events, last) {
		published = append(published, b.publish(t, e))
	}

	// The unfiltered stream gets everything.
	for _, want := range published {
		require.Equal(t, want, readWS(t, all))
	}
	collectWS := func(c *websocket.Conn) []string {
		var names []string
		for {
			_, m := typeOf(t, readWS(t, c))
			names = append(names, fmt.Sprint(m["name"]))
			if m["name"] == "all" {
				return names
			}
		}
	}
	require.Equal(t, []string{"s1-prod", "s1-prod-2", "all"}, collectWS(ws))

	var sseNames []string
	for {
		ev := sse.next(t)
		typ, m := typeOf(t, ev.data)
		require.Equal(t, "", typ, "no resync for filtered-out events: %s", ev.data)
		sseNames = append(sseNames, fmt.Sprint(m["name"]))
		if m["name"] == "all" {
			break
		}
	}
	require.Equal(t, []string{"s1-dev", "rel2", "all"}, sseNames)

	// A poll answers every queued packet at once.
	var sioNames []string
	deadline := time.Now().Add(waitFor)
	for len(sioNames) == 0 || sioNames[len(sioNames)-1] != "all" {
		require.True(t, time.Now().Before(deadline), "Socket.IO events: %v", sioNames)
		status, pkts := sio.poll()
		require.Equal(t, http.StatusOK, status)
		for _, pk := range pkts {
			if pk == "2" {
				sio.post("3")
				continue
			}
			require.True(t, strings.HasPrefix(pk, `42["event",`), "only events: %s", pk)
			var args []json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(pk[2:]), &args))
			_, m := typeOf(t, string(args[1]))
			sioNames = append(sioNames, fmt.Sprint(m["name"]))
		}
	}
	require.Equal(t, []string{"s2-prod", "rel2", "all"}, sioNames)

	// Subscribing again replaces the Socket.IO filter.
	sio.post(fmt.Sprintf(`42["subscribe",{"projectId":"%s","environment":"dev"}]`, b.project.ID))
	sio.until(`42["subscribed"`)
	b.publish(t, b.labelled("prod-again", event.Labels{"", "prod", "", `u "1"`}))
	dev := b.publish(t, b.labelled("dev-again", event.Labels{"", "dev", "", ""}))
	require.Equal(t, `42["event",`+dev+`]`, sio.until(`42["event"`))
}

// A filter value no event can carry is refused before the stream starts, naming it.
func TestFilterValuesAreValidated(t *testing.T) {
	t.Parallel()
	b := setup(t)
	long := strings.Repeat("x", event.MaxLabelChars+1)
	for _, q := range []string{"release=" + long, "userId=a%00b", "sessionId=%FF"} {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		_, resp, err := websocket.Dial(ctx, b.wsURL(b.project.ID.String())+"?token="+b.token+"&"+q, nil)
		cancel()
		require.Error(t, err)
		requireJSONErrorMessage(t, resp, http.StatusBadRequest, "VALIDATION_FAILED", "querystring/"+strings.Split(q, "=")[0])
		req, err := http.NewRequest(http.MethodGet, b.sseURL(b.project.ID.String())+"?token="+b.token+"&"+q, nil)
		require.NoError(t, err)
		resp, err = http.DefaultClient.Do(req)
		require.NoError(t, err)
		requireJSONErrorMessage(t, resp, http.StatusBadRequest, "VALIDATION_FAILED", "querystring/"+strings.Split(q, "=")[0])
	}
	sio := b.eioOpen(t)
	sio.post(`40{"token":"` + b.token + `"}`)
	sio.until(`40{"sid":`)
	sio.post(fmt.Sprintf(`42["subscribe",{"projectId":"%s","environment":5}]`, b.project.ID))
	require.Equal(t, fmt.Sprintf(`42["error",{"code":"VALIDATION_FAILED","message":"subscribe/environment must be string","projectId":"%s"}]`, b.project.ID), sio.until(`42["error"`))
	sio.post(fmt.Sprintf(`42["subscribe",{"projectId":"%s","userId":%q}]`, b.project.ID, long))
	require.Equal(t, fmt.Sprintf(`42["error",{"code":"VALIDATION_FAILED","message":"subscribe/userId must NOT have more than 200 characters","projectId":"%s"}]`, b.project.ID), sio.until(`42["error"`))
}

func requireJSONErrorMessage(t *testing.T, resp *http.Response, status int, code, msgPrefix string) {
	t.Helper()
	defer resp.Body.Close()
	require.Equal(t, status, resp.StatusCode)
	var body struct{ Code, Message string }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.Equal(t, code, body.Code)
	require.True(t, strings.HasPrefix(body.Message, msgPrefix), body.Message)
}

// The SSE replay applies the stream's filter in its queries: only matching missed
// events are replayed, the resync counts only matching ones, the events carry their
// labels, and live matching events follow.
func TestSSEReplayIsFiltered(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.cfg.ReplayLimit = 2 })
	base := time.Now().UTC().Add(-time.Minute).Truncate(time.Millisecond)
	var matching []string
	for i := range 10 {
		ls := event.Labels{"1.0", "prod", "s-other", ""}
		if i%2 == 0 {
			ls[event.LabelSessionID] = "s-1"
		}
		e := b.labelled(fmt.Sprintf("e%d", i), ls)
		e.ReceivedAt = base.Add(time.Duration(i) * time.Millisecond)
		e.Timestamp = e.ReceivedAt
		b.storeLabelled(t, e)
		if i%2 == 0 {
			matching = append(matching, string(e.AppendJSON(nil)))
		}
	}
	s := b.openSSE(t, http.Header{"Last-Event-ID": {cursorBefore(base.Add(-time.Second))}},
		"?token="+b.token+"&sessionId="+url.QueryEscape("s-1")+"&environment=prod")
	typ, m := typeOf(t, s.next(t).data)
	require.Equal(t, "resync", typ)
	require.Equal(t, 3.0, m["missed"], "5 matching events missed, 2 replayed")
	require.Equal(t, matching[3], s.next(t).data, "replayed from Postgres byte-identical, labels included")
	require.Equal(t, matching[4], s.next(t).data)
	b.publish(t, b.labelled("live-other", event.Labels{"", "prod", "s-2", ""}))
	live := b.publish(t, b.labelled("live-match", event.Labels{"", "prod", "s-1", ""}))
	require.Equal(t, live, s.next(t).data)
}
