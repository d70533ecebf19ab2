package channel

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Slack POSTs {"text": "…"} to a Slack-compatible incoming webhook (Slack, Mattermost,
// Rocket.Chat): the alert in words. Project and error names are attacker-controlled (any
// holder of an ingest key names errors), so every one is escaped as Slack requires (&,
// <, > → &amp;, &lt;, &gt;: "<!channel>" or "<@U123>" can never form a mention or a
// link) and "@" is followed by a zero-width joiner (Mattermost's and Rocket.Chat's
// "@channel", "@all", "@here" are plain words there). No HMAC: these receivers do not
// check one; the URL is the credential.
type Slack struct {
	HTTP *HTTP
}

// SlackEscape escapes s for a Slack message text.
func SlackEscape(s string) string {
	s = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "@", "@\u2060").Replace(s)
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// SlackText is n in words.
func SlackText(n Notification) string {
	var b strings.Builder
	name := SlackEscape(n.ProjectName)
	window := n.WindowEnd.Sub(n.WindowStart).Round(time.Second)
	switch n.Kind {
	case "resolved":
		fmt.Fprintf(&b, ":white_check_mark: PulseBoard: %s is back below %d errors per %s (at %s UTC).",
			name, n.Threshold, window, n.WindowEnd.UTC().Format(time.DateTime))
	default:
		fmt.Fprintf(&b, ":rotating_light: PulseBoard: %s had %d errors in %s (threshold %d), %s to %s UTC.",
			name, n.ErrorCount, window, n.Threshold,
			n.WindowStart.UTC().Format(time.DateTime), n.WindowEnd.UTC().Format(time.TimeOnly))
		if len(n.TopErrors) > 0 {
			b.WriteString("\nTop errors:")
			for _, e := range n.TopErrors {
				fmt.Fprintf(&b, "\n• %s (%d)", SlackEscape(truncateRunes(e.Name, 200)), e.Count)
			}
		}
		if n.Cooldown > 0 {
			fmt.Fprintf(&b, "\nNext alert for this project at the earliest in %s.", n.Cooldown.Round(time.Second))
		}
	}
	fmt.Fprintf(&b, "\nAlert %s", n.AlertID)
	return b.String()
}

func truncateRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

// Send implements Sender.
func (s Slack) Send(ctx context.Context, t Target, n Notification) (int, error) {
	body, err := json.Marshal(map[string]string{"text": SlackText(n)})
	if err != nil {
		return 0, permanent("encoding the message: %w", err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	return s.HTTP.Post(ctx, t.URL, body, h)
}
