package mail

import (
	"bytes"
	"fmt"
	htmltemplate "html/template"
	"strconv"
	"strings"
	texttemplate "text/template"
	"time"
)

// NameCount is an error name and how often it occurred.
type NameCount struct {
	Name  string
	Count int64
}

// Threshold is the content of a threshold alert.
type Threshold struct {
	AlertID     string
	ProjectID   string
	ProjectName string
	Count       int
	Threshold   int
	Window      time.Duration
	Cooldown    time.Duration
	WindowStart time.Time
	WindowEnd   time.Time
	// TopErrors are the most frequent error names in the window.
	TopErrors []NameCount
}

// Resolved is the content of a "resolved" email.
type Resolved struct {
	AlertID     string
	ProjectID   string
	ProjectName string
	Threshold   int
	Window      time.Duration
	// At is when the error count had stayed below the threshold for a full window.
	At time.Time
}

// DigestProject is one project's line in a digest.
type DigestProject struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Events int64  `json:"events"`
	Errors int64  `json:"errors"`
}

// Digest is the content of a daily digest.
type Digest struct {
	SendID   string
	UserName string
	From, To time.Time
	Projects []DigestProject
	// More is how many projects were left out (the digest lists at most a bounded
	// number, busiest first).
	More int
}

// Verification is the content of an address verification mail: the api recorded the
// link (its own public URL and a single-use token) when the account was registered or
// a resend was asked for. It carries nothing the registrant typed (not even the account
// name): the address may be someone else's, and the mail must not become a way to send
// them attacker-written text.
type Verification struct {
	ID      string
	Link    string
	Expires time.Time
}

const timeLayout = "2006-01-02 15:04:05 UTC"

// funcs are shared by both template kinds. Values pass through html/template's
// contextual escaping in the HTML part; in the text part, "line" keeps a user-supplied
// value on one line so that it cannot forge the layout.
var funcs = map[string]any{
	"line": OneLine,
	"time": func(t time.Time) string { return t.UTC().Format(timeLayout) },
	"dur":  humanDuration,
	"num":  func(n int64) string { return strconv.FormatInt(n, 10) },
}

var (
	textTmpl = texttemplate.Must(texttemplate.New("text").Funcs(funcs).Parse(textTemplates))
	htmlTmpl = htmltemplate.Must(htmltemplate.New("html").Funcs(funcs).Parse(htmlTemplates))
)

const textTemplates = `
{{define "threshold"}}Project "{{line .ProjectName}}" received {{.Count}} errors within {{dur .Window}}, reaching its alert threshold of {{.Threshold}}.

Window: {{time .WindowStart}} to {{time .WindowEnd}}
{{if .TopErrors}}
Most frequent errors in the window:
{{range .TopErrors}}  {{num .Count}} x {{line .Name}}
{{end}}{{end}}
You will get at most one such alert for this project every {{dur .Cooldown}}, and an email when the error rate has stayed below the threshold for a full window.

Project id: {{.ProjectID}}
Alert id: {{.AlertID}}
{{end}}
{{define "resolved"}}Errors in project "{{line .ProjectName}}" have stayed below the alert threshold of {{.Threshold}} per {{dur .Window}} for a full window.

Resolved at: {{time .At}}

Project id: {{.ProjectID}}
Alert id: {{.AlertID}}
{{end}}
{{define "digest"}}Hello {{line .UserName}},

your PulseBoard projects from {{time .From}} to {{time .To}}:

{{range .Projects}}  {{line .Name}}: {{num .Events}} events, {{num .Errors}} errors
{{end}}{{if .More}}  ... and {{.More}} more projects
{{end}}
Digest id: {{.SendID}}
{{end}}
{{define "verification"}}Hello,

please confirm that this is your address, so that PulseBoard can send you alert emails:

{{.Link}}

The link works once, until {{time .Expires}}. If you did not create a PulseBoard account, ignore this email: no alerts will be sent to you.
{{end}}`

const htmlTemplates = `
{{define "threshold"}}<!DOCTYPE html>
<html><body style="font-family:sans-serif">
<p>Project <strong>{{line .ProjectName}}</strong> received <strong>{{.Count}}</strong> errors within {{dur .Window}}, reaching its alert threshold of {{.Threshold}}.</p>
<p>Window: {{time .WindowStart}} to {{time .WindowEnd}}</p>
{{if .TopErrors}}<p>Most frequent errors in the window:</p>
<table>{{range .TopErrors}}<tr><td style="text-align:right">{{num .Count}}</td><td>{{line .Name}}</td></tr>{{end}}</table>{{end}}
<p>You will get at most one such alert for this project every {{dur .Cooldown}}, and an email when the error rate has stayed below the threshold for a full window.</p>
<p style="color:#888">Project id: {{.ProjectID}}<br>Alert id: {{.AlertID}}</p>
</body></html>
{{end}}
{{define "resolved"}}<!DOCTYPE html>
<html><body style="font-family:sans-serif">
<p>Errors in project <strong>{{line .ProjectName}}</strong> have stayed below the alert threshold of {{.Threshold}} per {{dur .Window}} for a full window.</p>
<p>Resolved at: {{time .At}}</p>
<p style="color:#888">Project id: {{.ProjectID}}<br>Alert id: {{.AlertID}}</p>
</body></html>
{{end}}
{{define "digest"}}<!DOCTYPE html>
<html><body style="font-family:sans-serif">
<p>Hello {{line .UserName}},</p>
<p>your PulseBoard projects from {{time .From}} to {{time .To}}:</p>
<table>
<tr><th style="text-align:left">Project</th><th>Events</th><th>Errors</th></tr>
{{range .Projects}}<tr><td>{{line .Name}}</td><td style="text-align:right">{{num .Events}}</td><td style="text-align:right">{{num .Errors}}</td></tr>
{{end}}</table>
{{if .More}}<p>… and {{.More}} more projects</p>{{end}}
<p style="color:#888">Digest id: {{.SendID}}</p>
</body></html>
{{end}}
{{define "verification"}}<!DOCTYPE html>
<html><body style="font-family:sans-serif">
<p>Hello,</p>
<p>please confirm that this is your address, so that PulseBoard can send you alert emails:</p>
<p><a href="{{.Link}}">Verify my email address</a></p>
<p>The link works once, until {{time .Expires}}. If you did not create a PulseBoard account, ignore this email: no alerts will be sent to you.</p>
</body></html>
{{end}}`

func render(name string, data any) (text, html string, err error) {
	var tb, hb bytes.Buffer
	if err := textTmpl.ExecuteTemplate(&tb, name, data); err != nil {
		return "", "", fmt.Errorf("rendering %s (text): %w", name, err)
	}
	if err := htmlTmpl.ExecuteTemplate(&hb, name, data); err != nil {
		return "", "", fmt.Errorf("rendering %s (html): %w", name, err)
	}
	return strings.TrimLeft(tb.String(), "\n"), hb.String(), nil
}

// ComposeThreshold renders a threshold alert to to.
func ComposeThreshold(to string, a Threshold) (Message, error) {
	text, html, err := render("threshold", a)
	if err != nil {
		return Message{}, err
	}
	return Message{
		Kind: "threshold", ID: "alert-" + a.AlertID, To: to,
		Subject: fmt.Sprintf("[PulseBoard] %s: %d errors in %s (threshold %d)",
			SanitizeHeader(a.ProjectName, 80), a.Count, humanDuration(a.Window), a.Threshold),
		Text: text, HTML: html,
	}, nil
}

// ComposeResolved renders a "resolved" email to to.
func ComposeResolved(to string, r Resolved) (Message, error) {
	text, html, err := render("resolved", r)
	if err != nil {
		return Message{}, err
	}
	return Message{
		Kind: "resolved", ID: "alert-" + r.AlertID, To: to,
		Subject: fmt.Sprintf("[PulseBoard] Resolved: %s is back below %d errors per %s",
			SanitizeHeader(r.ProjectName, 80), r.Threshold, humanDuration(r.Window)),
		Text: text, HTML: html,
	}, nil
}

// ComposeDigest renders a daily digest to to.
func ComposeDigest(to string, d Digest) (Message, error) {
	text, html, err := render("digest", d)
	if err != nil {
		return Message{}, err
	}
	return Message{
		Kind: "digest", ID: "digest-" + d.SendID, To: to,
		Subject: "[PulseBoard] Daily digest for " + d.To.UTC().Add(-time.Nanosecond).Format(time.DateOnly),
		Text:    text, HTML: html,
	}, nil
}

// ComposeVerification renders an address verification mail to to.
func ComposeVerification(to string, v Verification) (Message, error) {
	if !strings.HasPrefix(v.Link, "https://") && !strings.HasPrefix(v.Link, "http://") {
		return Message{}, Permanent(fmt.Errorf("verification %s: the link is not an http(s) URL", v.ID))
	}
	text, html, err := render("verification", v)
	if err != nil {
		return Message{}, err
	}
	return Message{
		Kind: "verification", ID: "verify-" + v.ID, To: to,
		Subject: "[PulseBoard] Verify your email address",
		Text:    text, HTML: html,
	}, nil
}

// humanDuration prints 60s as "60s", 15m0s as "15m", 1h30m0s as "1h30m".
func humanDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
