package sage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/time/rate"
)

// A Session sends each call through these layers, outermost first:
//
//	retryTransport  attempts with backoff on network errors, 408, 429, 5xx; honours Retry-After
//	authTransport   Authorization: Bearer from the connection's token; one refresh and resend on 401
//	limitTransport  waits for the business's rate limiter before every request sent
//	sendTransport   bounds one request with Config.Timeout and reads its body into memory
//
// Every layer that sends a body more than once takes a fresh copy from Request.GetBody.
var (
	_ http.RoundTripper = (*retryTransport)(nil)
	_ http.RoundTripper = (*authTransport)(nil)
	_ http.RoundTripper = (*limitTransport)(nil)
	_ http.RoundTripper = (*sendTransport)(nil)
)

// maxBody bounds a response body read into memory (a page of 200 items with attributes=all is
// well under a megabyte).
const maxBody = 32 << 20

// retryTransport repeats a request on network failures and retryable statuses, up to
// Config.MaxAttempts, waiting the Retry-After Sage gave or else an exponential backoff with
// jitter. It returns the last response or error; it never retries an error a lower layer has
// already classified (*RetryableError, *PermanentError), nor a body it cannot replay.
type retryTransport struct {
	c    *Client
	log  *slog.Logger
	next http.RoundTripper
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	b := t.c.newBackoff()
	for attempt := 1; ; attempt++ {
		resp, err := t.next.RoundTrip(req)
		var wait time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil || classified(err) {
				return nil, err
			}
		case retryableStatus(resp.StatusCode):
			wait = retryAfter(resp.Header, t.c.clock.Now())
		default:
			return resp, nil
		}
		if attempt >= t.c.cfg.MaxAttempts || !replayable || wait > t.c.maxRetryAfter {
			return resp, err
		}
		if wait == 0 {
			if wait = b.NextBackOff(); wait == backoff.Stop {
				return resp, err
			}
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return resp, err // the caller cannot wait that long: let it see why
		}
		attrs := []any{"method", req.Method, "path", req.URL.Path, "attempt", attempt, "wait", wait}
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.c.obs.Retry(req.Method, req.URL.Path, status)
		if err != nil {
			attrs = append(attrs, "error", err.Error())
		} else {
			attrs = append(attrs, "status", resp.StatusCode)
			resp.Body.Close()
		}
		t.log.Warn("sage request failed; retrying", attrs...)
		if serr := sleep(ctx, t.c.clock, wait); serr != nil {
			return nil, serr
		}
	}
}

// classified reports whether a lower layer already decided what err means.
func classified(err error) bool {
	var re *RetryableError
	var pe *PermanentError
	return errors.As(err, &re) || errors.As(err, &pe)
}

// newBackoff is the exponential backoff of one call: factor 2, ±50 % jitter, capped at
// backoffMax, bounded by attempts rather than elapsed time.
func (c *Client) newBackoff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     c.backoffInitial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         c.backoffMax,
		MaxElapsedTime:      0,
		Stop:                backoff.Stop,
		Clock:               c.clock,
	}
	b.Reset()
	return b
}

// sleep waits d on clk, or until ctx ends.
func sleep(ctx context.Context, clk Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-clk.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// authTransport adds the connection's bearer token. On a 401 it refreshes the token once (unless
// another goroutine already did) and sends the request again; a second 401 is returned as is.
// It refuses to send the token to any host but the API's.
type authTransport struct {
	s    *Session
	next http.RoundTripper
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	api := t.s.c.apiURL
	if api == nil {
		return nil, &PermanentError{Err: fmt.Errorf("sage api url %q is not an absolute url", t.s.c.cfg.APIURL)}
	}
	if req.URL.Scheme != api.Scheme || req.URL.Host != api.Host {
		return nil, &PermanentError{Err: fmt.Errorf("refusing to send the sage token to %s://%s", req.URL.Scheme, req.URL.Host)}
	}
	ctx := req.Context()
	tok, err := t.s.token(ctx, "", 0)
	if err != nil {
		return nil, err
	}
	resp, err := t.send(req, tok.AccessToken)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil
	}
	t.s.log.Info("sage answered 401; refreshing the token and sending once more", "method", req.Method, "path", req.URL.Path)
	fresh, err := t.s.token(ctx, tok.AccessToken, 0)
	if err != nil {
		resp.Body.Close()
		return nil, err
	}
	resp.Body.Close()
	return t.send(req, fresh.AccessToken)
}

func (t *authTransport) send(req *http.Request, accessToken string) (*http.Response, error) {
	r := req.Clone(req.Context())
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			return nil, fmt.Errorf("replaying request body: %w", err)
		}
		r.Body = body
	}
	r.Header.Set("Authorization", "Bearer "+accessToken)
	return t.next.RoundTrip(r)
}

// limitTransport waits for the business's rate limiter before each request, on the Client's clock.
type limitTransport struct {
	lim   *rate.Limiter
	clock Clock
	next  http.RoundTripper
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	now := t.clock.Now()
	r := t.lim.ReserveN(now, 1)
	if !r.OK() {
		return nil, errors.New("rate limiter refused a single request")
	}
	if d := r.DelayFrom(now); d > 0 {
		if err := sleep(ctx, t.clock, d); err != nil {
			r.CancelAt(t.clock.Now())
			return nil, err
		}
	}
	return t.next.RoundTrip(req)
}

// sendTransport sends one request through the base transport within Config.Timeout and reads
// the whole response body, so the timeout covers the body and outer layers may read it freely.
type sendTransport struct {
	c   *Client
	log *slog.Logger
}

func (t *sendTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(req.Context(), t.c.cfg.Timeout)
	defer cancel()
	start := time.Now()
	resp, err := t.c.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.c.obs.Request(req.Method, req.URL.Path, 0)
		t.log.Debug("sage request", "method", req.Method, "path", req.URL.Path, "error", err.Error(), "took", time.Since(start))
		return nil, err
	}
	body, err := readBody(resp.Body, resp.ContentLength)
	resp.Body.Close()
	t.c.obs.Request(req.Method, req.URL.Path, resp.StatusCode)
	if err != nil {
		return nil, fmt.Errorf("reading response body: %w", err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("response body larger than %d bytes", maxBody)
	}
	resp.Body = &readBodyCloser{Reader: bytes.NewReader(body), data: body}
	resp.ContentLength = int64(len(body))
	t.log.Debug("sage request", "method", req.Method, "path", req.URL.Path, "status", resp.StatusCode, "took", time.Since(start))
	return resp, nil
}

// readBody reads r, at most maxBody+1 bytes. A body that declares its length (contentLength,
// -1 when unknown) of up to 64 KiB is read into one slice of that length plus bytes.MinRead,
// the room bytes.Buffer wants free before each read, so the usual 1–2 KB reply costs one
// allocation rather than a slice grown from 512 bytes four times. The declared length only
// sizes the slice up to that cap: a server that declares more than it sends costs no more.
func readBody(r io.Reader, contentLength int64) ([]byte, error) {
	if contentLength < 0 || contentLength > 64<<10 {
		return io.ReadAll(io.LimitReader(r, maxBody+1))
	}
	buf := bytes.NewBuffer(make([]byte, 0, contentLength+bytes.MinRead))
	_, err := buf.ReadFrom(io.LimitReader(r, maxBody+1))
	return buf.Bytes(), err
}

// readBodyCloser is a response body sendTransport has read whole: Bytes gives it without a copy.
type readBodyCloser struct {
	*bytes.Reader
	data []byte
}

func (b *readBodyCloser) Close() error { return nil }

// Bytes returns the whole body, whatever has been read of it.
func (b *readBodyCloser) Bytes() []byte { return b.data }
