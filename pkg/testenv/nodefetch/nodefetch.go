// Package nodefetch posts request bodies with Node's fetch (undici), a real client of
// the kind PulseBoard's SDK users run, for tests of what such a client sees: undici
// writes the whole body before it reads the answer, so a server that answers early and
// closes (a 413) must drain the body for it to see the status rather than ECONNRESET.
// Node 20 is on every CI machine (scripts/test-services.sh's machine); a missing node
// fails the test, never skips it.
package nodefetch

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Answer is what fetch saw: a status and body, or status 0 and the error.
type Answer struct {
	Status int
	Text   string
}

const script = `
const [url, size, attempts, slow] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3]), process.argv[4] === 'slow'];
const whole = Buffer.alloc(size, 'a');
// slow: a chunked body of 128 KiB parts 60 ms apart, a client on a slow link.
const slowBody = () => {
  let sent = 0;
  return new ReadableStream({async pull(c) {
    if (sent >= size) { c.close(); return; }
    await new Promise(r => setTimeout(r, 60));
    const n = Math.min(128 << 10, size - sent);
    c.enqueue(whole.subarray(sent, sent + n));
    sent += n;
  }});
};
(async () => {
  const seen = [];
  for (let i = 0; i < attempts; i++) {
    try {
      const opts = {method: 'POST', headers: {'content-type': 'application/json'}, body: whole};
      if (slow) { opts.body = slowBody(); opts.duplex = 'half'; }
      const r = await fetch(url, opts);
      seen.push({status: r.status, text: await r.text()});
    } catch (e) {
      seen.push({status: 0, text: String(e) + ' / ' + String(e.cause && (e.cause.code || e.cause))});
    }
  }
  console.log(JSON.stringify(seen));
})();
`

// Post POSTs a JSON-typed body of size bytes to url attempts times and returns what fetch
// saw each time; slow sends it chunked, in parts 60 ms apart.
func Post(t testing.TB, url string, size, attempts int, slow bool) []Answer {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node (20+) is required for this test: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mode := ""
	if slow {
		mode = "slow"
	}
	out, err := exec.CommandContext(ctx, node, "-e", script, url, strconv.Itoa(size), strconv.Itoa(attempts), mode).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v: %s", err, out)
	}
	var res []Answer
	if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil {
		t.Fatalf("node printed %q: %v", out, err)
	}
	if len(res) != attempts {
		t.Fatalf("node answered %d attempts, want %d: %s", len(res), attempts, out)
	}
	return res
}
