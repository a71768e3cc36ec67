package sage

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// maxExcerpt bounds APIError.Body, in bytes.
const maxExcerpt = 200

// redacted replaces a secret in error text.
const redacted = "[REDACTED]"

// minSecretLen keeps redaction from mangling text when a (test) secret is absurdly short.
const minSecretLen = 8

// IsNotFound reports whether err carries Sage's 404 answer (an unknown id or endpoint).
func IsNotFound(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound
}

// IsRefused reports whether err is Sage's answer that it refused the request, and so applied
// nothing: a permanent 4xx (422 RecordInvalid, 404, 403), not a failure to read a 2xx reply.
func IsRefused(err error) bool {
	var pe *PermanentError
	var apiErr *APIError
	return errors.As(err, &pe) && errors.As(err, &apiErr) && apiErr.StatusCode >= 400 && apiErr.StatusCode < 500
}

// retryableStatus reports whether an HTTP status is worth sending again: 408, 429 and 5xx.
func retryableStatus(code int) bool {
	return code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500
}

// newAPIError decodes a non-2xx answer: Sage's error array, a single error object, or OAuth's
// {"error","error_description"}; anything else is kept as a short excerpt in Body. Every text
// taken from the body has secrets removed.
func newAPIError(method, path string, resp *http.Response, body []byte, now time.Time, secrets []string) *APIError {
	e := &APIError{StatusCode: resp.StatusCode, Method: method, Path: path}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		e.RetryAfter = retryAfter(resp.Header, now)
	}
	items, ok := decodeErrorItems(body)
	if ok {
		for i := range items {
			items[i].Message = redact(items[i].Message, secrets)
			items[i].Source = redact(items[i].Source, secrets)
			items[i].DataCode = redact(items[i].DataCode, secrets)
		}
		e.Items = items
		return e
	}
	e.Body = excerpt(redact(string(body), secrets))
	return e
}

// decodeErrorItems reads the shapes Sage uses for errors. ok is false when body is none of them.
func decodeErrorItems(body []byte) (items []ErrorItem, ok bool) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, false
	}
	switch body[0] {
	case '[':
		if err := json.Unmarshal(body, &items); err != nil {
			return nil, false
		}
		return items, true
	case '{':
		var obj struct {
			ErrorItem
			Error            json.RawMessage `json:"error"`
			ErrorDescription string          `json:"error_description"`
		}
		if err := json.Unmarshal(body, &obj); err != nil {
			return nil, false
		}
		var code string
		if len(obj.Error) > 0 && json.Unmarshal(obj.Error, &code) == nil && code != "" {
			return []ErrorItem{{Severity: "error", DataCode: code, Message: obj.ErrorDescription}}, true
		}
		if obj.DataCode != "" || obj.Message != "" {
			return []ErrorItem{obj.ErrorItem}, true
		}
	}
	return nil, false
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date. Zero when absent,
// malformed or in the past.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// excerpt shortens s to maxExcerpt bytes on a rune boundary, collapsing whitespace.
func excerpt(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= maxExcerpt {
		return s
	}
	cut := maxExcerpt
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// redact replaces every secret in s. Call it before shortening s, so no prefix of a secret is
// left behind by the cut.
func redact(s string, secrets []string) string {
	for _, sec := range secrets {
		if len(sec) >= minSecretLen {
			s = strings.ReplaceAll(s, sec, redacted)
		}
	}
	return s
}

// redactedError keeps an error's chain for errors.Is/As while its text has our secrets removed.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr returns err unchanged when its text holds no secret, else a redactedError.
func redactErr(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if r := redact(msg, secrets); r != msg {
		return &redactedError{msg: r, err: err}
	}
	return err
}
