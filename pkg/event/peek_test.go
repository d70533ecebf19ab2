package event

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const peekMsg = `{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"error","name":"n","payload":{"a":[1,{"type":"event"}],"s":"x\"}"},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","context":{"c":"x"}}`

func TestPeekMessage(t *testing.T) {
	t.Parallel()
	s, ok := PeekMessage([]byte(peekMsg))
	require.True(t, ok)
	require.Equal(t, testProject, s.ProjectID)
	require.Equal(t, TypeError, s.Type, "the payload's nested \"type\" is not the event's")
	require.True(t, time.Date(2024, 1, 15, 10, 20, 31, 5e6, time.UTC).Equal(s.ReceivedAt))

	// What the ingestor writes peeks as it decodes.
	ev, err := NewDecoder(DefaultLimits()).DecodeMessage([]byte(peekMsg))
	require.NoError(t, err)
	s, ok = PeekMessage(ev.AppendJSON(nil))
	require.True(t, ok)
	require.Equal(t, Summary{ProjectID: ev.ProjectID, Type: ev.Type, ReceivedAt: ev.ReceivedAt}, s)

	// Whitespace, and the last of duplicate keys, as DecodeMessage reads them.
	s, ok = PeekMessage([]byte(" {\n\"type\" : \"event\" ,\t\"projectId\":\"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8\",\"n\":null,\"type\":\"metric\",\"receivedAt\":\"2024-01-15T10:20:31Z\"}\n"))
	require.True(t, ok)
	require.Equal(t, TypeMetric, s.Type)

	// What it cannot read alone goes to DecodeMessage.
	for _, in := range []string{
		``, `[]`, `{}`, `{"type":"error"`, `{"type" "error"}`,
		`{"type":"\u0065rror","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","receivedAt":"2024-01-15T10:20:31Z"}`,
		`{"t\u0079pe":"error","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","receivedAt":"2024-01-15T10:20:31Z"}`,
		`{"type":1,"projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","receivedAt":"2024-01-15T10:20:31Z"}`,
		`{"type":"fatal","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","receivedAt":"2024-01-15T10:20:31Z"}`,
		`{"type":"error","projectId":"00000000-0000-0000-0000-000000000000","receivedAt":"2024-01-15T10:20:31Z"}`,
		`{"type":"error","projectId":"3f2a8c1e5b7d4e9fa1c2d3e4f5a6b7c8","receivedAt":"2024-01-15T10:20:31Z"}`,
		`{"type":"error","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","receivedAt":"yesterday"}`,
		`{"type":"error","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","receivedAt":"2024-01-15T10:20:31Z","p":{"a":"}`,
	} {
		_, ok := PeekMessage([]byte(in))
		require.False(t, ok, in)
	}
}

// FuzzPeekMessage: for every message DecodeMessage accepts, PeekMessage either says it
// cannot tell or finds the same project, type and receive time.
func FuzzPeekMessage(f *testing.F) {
	for _, s := range []string{
		peekMsg,
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"event","name":"n","payload":{},"timestamp":"2024-01-15T10:20:30.123Z","receivedAt":"2024-01-15T10:20:31.005Z","type":"error"}`,
		`{"id":"0190a6b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","projectId":"3f2a8c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8","type":"metric","name":"n","payload":[{"x":"\\"},"]"}],"timestamp":"2024-01-15","receivedAt":"2024-01-15T10:20:31"}`,
		`{"id":null,"projectId":1,"type":[],"name":{},"payload":"","timestamp":0,"receivedAt":false}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		t.Parallel()
		s, ok := PeekMessage(msg)
		ev, err := NewDecoder(DefaultLimits()).DecodeMessage(msg)
		if err != nil || !ok {
			return
		}
		require.Equal(t, ev.ProjectID, s.ProjectID)
		require.Equal(t, ev.Type, s.Type)
		require.True(t, ev.ReceivedAt.Equal(s.ReceivedAt), "%s vs %s", ev.ReceivedAt, s.ReceivedAt)
	})
}

func BenchmarkPeekMessage(b *testing.B) {
	msg := benchMessage(b, NewDecoder(DefaultLimits()))
	for b.Loop() {
		if _, ok := PeekMessage(msg); !ok {
			b.Fatal("not peeked")
		}
	}
}
