package ingestor_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/pkg/apikey"
)

// TestIngestBatchFormats: 1000 events in every accepted body format, encoding and key
// location are all acknowledged, answered in order and on the topic.
func TestIngestBatchFormats(t *testing.T) {
	t.Parallel()
	type format struct {
		name string
		body func(t *testing.T, evs []map[string]any) []byte
		hdr  func(key string) hdr
	}
	for _, f := range []format{
		{"array gzip X-API-Key", func(t *testing.T, evs []map[string]any) []byte {
			return gzipBytes(t, mustJSON(t, evs))
		}, func(key string) hdr { return hdr{"Content-Encoding": "gzip", "X-API-Key": key} }},
		{"events object zstd Bearer", func(t *testing.T, evs []map[string]any) []byte {
			return zstdBytes(t, mustJSON(t, map[string]any{"events": evs}))
		}, func(key string) hdr { return hdr{"Content-Encoding": "zstd", "Authorization": "Bearer " + key} }},
		{"ndjson", func(t *testing.T, evs []map[string]any) []byte {
			return ndjson(t, evs)
		}, func(key string) hdr { return hdr{"Content-Type": "application/x-ndjson", "X-API-Key": key} }},
		{"ndjson gzip charset", func(t *testing.T, evs []map[string]any) []byte {
			return gzipBytes(t, ndjson(t, evs))
		}, func(key string) hdr {
			return hdr{"Content-Type": "application/x-ndjson; charset=utf-8", "Content-Encoding": "gzip", "X-API-Key": key}
		}},
		{"array per-event apiKey", func(t *testing.T, evs []map[string]any) []byte {
			return mustJSON(t, evs)
		}, func(string) hdr { return nil }},
	} {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			evs, ids := batchEvents(1000)
			if f.hdr(b.project.APIKey) == nil {
				for _, ev := range evs {
					ev["apiKey"] = b.project.APIKey
				}
			}
			res := b.post(t, "/ingest/batch", f.body(t, evs), f.hdr(b.project.APIKey))
			require.Equal(t, http.StatusAccepted, res.status, "body: %.500s", res.body)
			require.True(t, res.env.Success)
			require.Equal(t, "application/json; charset=utf-8", res.header.Get("Content-Type"))
			d := decodeBatch(t, res)
			require.Equal(t, 1000, d.Accepted)
			require.Zero(t, d.Rejected)
			for i, r := range d.Results {
				require.Equal(t, "accepted", r.Status)
				require.Equal(t, ids[i], r.ID, "results are in request order")
			}

			byID := messagesByID(t, b.readTopic(t))
			require.Len(t, byID, 1000)
			for i, id := range ids {
				m, ok := byID[id]
				require.True(t, ok, "event %d (%s) is on the topic", i, id)
				require.Equal(t, b.project.ID.String(), string(m.Key))
				requireMurmur2Partition(t, m)
				var ev wireEvent
				require.NoError(t, json.Unmarshal(m.Value, &ev))
				require.Equal(t, evs[i]["name"], ev.Name)
				require.Equal(t, evs[i]["type"], ev.Type)
				require.Equal(t, b.project.ID, ev.ProjectID)
			}
			require.Equal(t, 1000.0, metricValue(t, b.reg, "pulseboard_ingest_events_accepted_total"))
		})
	}
}

// TestIngestBatchPartial: invalid events are rejected with their index, code and message;
// only the valid ones are produced, and the answer is 200.
func TestIngestBatchPartial(t *testing.T) {
	t.Parallel()
	b := setup(t)
	evs, ids := batchEvents(6)
	delete(evs[1], "name")
	evs[3]["type"] = "warning"
	evs[4]["payload"] = []int{1, 2}
	// > 64 KiB once encoded in short strings (which cannot be shortened to fit), batch < 1 MiB
	evs[5]["payload"] = map[string]any{"big": strings.Split(strings.Repeat(strings.Repeat("x", 60)+",", 1100), ",")}

	res := b.post(t, "/ingest/batch", mustJSON(t, evs), hdr{"X-API-Key": b.project.APIKey})
	require.Equal(t, http.StatusOK, res.status, "body: %.1000s", res.body)
	require.True(t, res.env.Success)
	d := decodeBatch(t, res)
	require.Equal(t, 2, d.Accepted)
	require.Equal(t, 4, d.Rejected)

	for _, i := range []int{0, 2} {
		require.Equal(t, batchResult{Index: i, ID: ids[i], Status: "accepted"}, d.Results[i])
	}
	want := map[int]struct{ code, field string }{
		1: {"VALIDATION_FAILED", "name"},
		3: {"VALIDATION_FAILED", "type"},
		4: {"VALIDATION_FAILED", "payload"},
		5: {"PAYLOAD_TOO_LARGE", ""},
	}
	for i, w := range want {
		r := d.Results[i]
		require.Equal(t, "rejected", r.Status, "index %d", i)
		require.Equal(t, w.code, r.Code, "index %d", i)
		require.Equal(t, uuid.Nil, r.ID, "index %d", i)
		require.Contains(t, r.Message, w.field, "index %d", i)
	}

	byID := messagesByID(t, b.readTopic(t))
	require.Len(t, byID, 2, "only the valid events are produced")
	require.Contains(t, byID, ids[0])
	require.Contains(t, byID, ids[2])
}

// TestIngestBatchAllInvalid: a batch where nothing is valid is a 400 and produces nothing.
func TestIngestBatchAllInvalid(t *testing.T) {
	t.Parallel()
	b := setup(t)
	evs, _ := batchEvents(3)
	for _, ev := range evs {
		ev["type"] = 7
	}
	res := b.post(t, "/ingest/batch", mustJSON(t, evs), hdr{"X-API-Key": b.project.APIKey})
	requireJSONError(t, res, http.StatusBadRequest, "VALIDATION_FAILED")
	d := decodeBatch(t, res)
	require.Zero(t, d.Accepted)
	require.Equal(t, 3, d.Rejected)
	for _, r := range d.Results {
		require.Equal(t, "rejected", r.Status)
		require.Contains(t, r.Message, "type")
	}

	// NDJSON whose lines are all broken.
	res = b.post(t, "/ingest/batch", []byte("{\"name\":\nnot json\n[1,2\n"), hdr{"Content-Type": "application/x-ndjson", "X-API-Key": b.project.APIKey})
	require.Equal(t, http.StatusBadRequest, res.status, "body: %s", res.body)
	d = decodeBatch(t, res)
	require.Equal(t, 3, d.Rejected)
	for _, r := range d.Results {
		require.Equal(t, "INVALID_JSON", r.Code)
	}
	require.Zero(t, b.produced(t))
}

// TestIngestBatchPerEventKeys: without a header key each event carries its own apiKey,
// possibly of different projects; an unknown one rejects only that event.
func TestIngestBatchPerEventKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	other := b.newProject(t, "other")
	unknown, err := apikey.Generate()
	require.NoError(t, err)

	evs, ids := batchEvents(5)
	keys := []string{b.project.APIKey, other.APIKey, unknown, b.project.APIKey, ""}
	for i, k := range keys {
		if k != "" {
			evs[i]["apiKey"] = k
		}
	}
	res := b.post(t, "/ingest/batch", mustJSON(t, evs), nil)
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	d := decodeBatch(t, res)
	require.Equal(t, 3, d.Accepted)
	for _, i := range []int{2, 4} {
		require.Equal(t, "rejected", d.Results[i].Status)
		require.Equal(t, "INVALID_API_KEY", d.Results[i].Code)
		require.Equal(t, "Invalid API key", d.Results[i].Message)
	}

	byID := messagesByID(t, b.readTopic(t))
	require.Len(t, byID, 3)
	require.Equal(t, b.project.ID.String(), string(byID[ids[0]].Key))
	require.Equal(t, other.ID.String(), string(byID[ids[1]].Key))
	require.Equal(t, b.project.ID.String(), string(byID[ids[3]].Key))

	// A header key wins over the events' own keys.
	evs, ids = batchEvents(2)
	evs[0]["apiKey"] = other.APIKey
	evs[1]["apiKey"] = unknown
	res = b.post(t, "/ingest/batch", mustJSON(t, evs), hdr{"X-API-Key": b.project.APIKey})
	require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
	byID = messagesByID(t, b.readTopic(t))
	require.Equal(t, b.project.ID.String(), string(byID[ids[0]].Key))
	require.Equal(t, b.project.ID.String(), string(byID[ids[1]].Key))
}

// TestIngestBatchNDJSONPartial: one broken NDJSON line is rejected with its index.
func TestIngestBatchNDJSONPartial(t *testing.T) {
	t.Parallel()
	b := setup(t)
	evs, ids := batchEvents(3)
	body := append(mustJSON(t, evs[0]), "\n{\"type\":\n\n"...) // blank lines are skipped
	body = append(body, mustJSON(t, evs[1])...)
	body = append(body, "\r\n"...)
	body = append(body, mustJSON(t, evs[2])...) // no final newline
	res := b.post(t, "/ingest/batch", body, hdr{"Content-Type": "application/x-ndjson", "X-API-Key": b.project.APIKey})
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	d := decodeBatch(t, res)
	require.Len(t, d.Results, 4)
	require.Equal(t, ids[0], d.Results[0].ID)
	require.Equal(t, "INVALID_JSON", d.Results[1].Code)
	require.Equal(t, ids[1], d.Results[2].ID)
	require.Equal(t, ids[2], d.Results[3].ID)
	require.Len(t, b.readTopic(t), 3)
}

// TestIngestBatchRawPathMatchesParse: a compact batch (what SDKs send, decoded by the raw
// path) and the same batch indented (decoded through the parse tree) put the same
// messages on the topic, apart from the receive time.
func TestIngestBatchRawPathMatchesParse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	evs, ids := batchEvents(6)
	evs[1]["context"] = map[string]any{"os": "linux", "n": []any{1.5e300, -2, true, nil, "é"}}
	evs[2]["payload"] = map[string]any{"deep": map[string]any{"a": []any{map[string]any{"b": "c"}}}}
	evs[4]["apiKey"] = "ignored with a header key"
	compact := mustJSON(t, evs)
	indented, err := json.MarshalIndent(evs, "", "  ")
	require.NoError(t, err)

	values := func(body []byte) map[uuid.UUID]map[string]any {
		res := b.post(t, "/ingest/batch", body, hdr{"X-API-Key": b.project.APIKey})
		require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
		out := map[uuid.UUID]map[string]any{}
		for id, m := range messagesByID(t, b.readTopic(t), true) { // the last copy of each id
			var v map[string]any
			require.NoError(t, json.Unmarshal(m.Value, &v))
			require.Equal(t, b.project.ID.String(), string(m.Key))
			delete(v, "receivedAt")
			out[id] = v
		}
		return out
	}
	raw := values(compact)
	parsed := values(indented) // the same ids: the topic holds both copies, the later wins
	require.Len(t, raw, len(ids))
	require.Equal(t, raw, parsed)
	require.Equal(t, map[string]any{"os": "linux", "n": []any{1.5e300, -2.0, true, nil, "é"}}, raw[ids[1]]["context"])
}
