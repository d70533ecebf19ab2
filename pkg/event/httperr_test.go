package event

import (
	"strings"
	"testing"

	"github.com/pulseboard/pulseboard/pkg/httperr"
)

// httperr escapes error messages with its own copy of AppendString's rules (it imports no
// domain package): the error bodies must stay byte for byte what they were.
func TestHTTPErrBodyEscapesLikeAppendString(t *testing.T) {
	inputs := []string{"", "plain", "body/name must be string", strings.Repeat("ab\"c\\d\x7f", 9), "é ☃ \U0001F600", "\xff\xfe invalid"}
	for c := 0; c < 256; c++ {
		inputs = append(inputs, string([]byte{byte(c)}), "0123456789"+string([]byte{byte(c)})+"x")
	}
	for _, in := range inputs {
		want := `{"success":false,"code":"INVALID_JSON","message":` + string(AppendString(nil, in)) + `}`
		if got := string(httperr.AppendBody(nil, httperr.InvalidJSON, in)); got != want {
			t.Fatalf("AppendBody(%q) = %s, want %s", in, got, want)
		}
	}
	if CodeInvalidJSON != "INVALID_JSON" || CodeValidationFailed != "VALIDATION_FAILED" ||
		CodeInvalidTimestamp != "INVALID_TIMESTAMP" || CodePayloadTooLarge != "PAYLOAD_TOO_LARGE" {
		t.Fatal("event codes changed")
	}
}
