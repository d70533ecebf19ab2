package live

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pulseboard/pulseboard/pkg/auth"
)

// FuzzSocketIOPackets feeds an arbitrary polling body (Engine.IO packets separated by
// U+001E, as a client POSTs them) to a fresh session that has not authenticated, and
// checks what it answers:
//
//   - no panic, and no input connects the socket (tokens are checked before anything
//     reaches the database, and no input can forge one);
//   - every reply is a well-formed CONNECT_ERROR: `44{"message","data":{code,message}}`
//     on the main namespace, or `44/<nsp>,{"message":"Invalid namespace"}`;
//   - the packet budget holds: at most clientFrameBurst packets are handled, so at most
//     that many replies are queued.
func FuzzSocketIOPackets(f *testing.F) {
	for _, seed := range []string{
		"40", `40{"token":"x"}`, `40{"token":"Bearer "}`, `40{"token":7}`, `40[]`, "40{", "41", "4",
		`42["subscribe","0193a0c2-4f1e-7c55-8a3b-0d6f1d2e3f41"]`, `421["unsubscribe",{"projectId":"x"}]`,
		"4/admin,0", "4/admin,", "4/", `4/admin,2["x"]`, `451-["x",{"_placeholder":true,"num":0}]`,
		"41234567890[]", "3", "2", "2probe", "5", "6", "1", "b4AAAA", "", "\x1e\x1e", "40\x1e40\x1e4/x,0",
		strings.Repeat("40\x1e", 150), "4\xff\xfe", `40{"token":"\ud800"}`,
	} {
		f.Add([]byte(seed))
	}
	h := fuzzHub()
	tokens, err := auth.NewTokens(auth.RandomSecret(), 15*60e9)
	if err != nil {
		f.Fatal(err)
	}
	h.tokens = tokens
	f.Fuzz(func(t *testing.T, body []byte) {
		s := &eioSession{
			h: h, sid: "fuzz", queue: newMsgQueue(transportSIO, 1<<16, 1<<30),
			out: make(chan struct{}, 1), upgraded: make(chan struct{}), kick: make(chan struct{}, 1),
			done: make(chan struct{}), lim: limiter{tokens: clientFrameBurst},
		}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		defer s.cancel()
		for p := range bytes.SplitSeq(body, []byte{eioSep}) {
			if !s.receive(p) {
				break
			}
		}
		if s.socket() != nil {
			t.Fatalf("%q connected a socket", body)
		}
		msgs, _ := s.queue.pop(nil, 1<<20, 1<<40)
		if len(msgs) > clientFrameBurst {
			t.Fatalf("%d replies to %q: the packet budget did not hold", len(msgs), body)
		}
		for _, m := range msgs {
			checkConnectError(t, body, m.sio)
		}
	})
}

func checkConnectError(t *testing.T, in, pkt []byte) {
	t.Helper()
	rest, ok := bytes.CutPrefix(pkt, []byte("44"))
	if !ok {
		t.Fatalf("reply %q to %q is not a CONNECT_ERROR", pkt, in)
	}
	if len(rest) > 0 && rest[0] == '/' {
		i := bytes.IndexByte(rest, ',')
		if i < 0 || string(rest[i+1:]) != `{"message":"Invalid namespace"}` {
			t.Fatalf("reply %q to %q: bad namespace refusal", pkt, in)
		}
		return
	}
	var e struct {
		Message *string `json:"message"`
		Data    *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"data"`
	}
	if err := json.Unmarshal(rest, &e); err != nil || e.Message == nil || e.Data == nil || e.Data.Code != *e.Message || e.Data.Message == "" {
		t.Fatalf("reply %q to %q: malformed CONNECT_ERROR (%v)", pkt, in, err)
	}
}
