// Package apitest is the far end of the HTTP API destinations in their tests: a loopback
// HTTP server that answers each request as one API's published contract says (a Handler
// per API), records the messages the API would have kept, and injects the faults the
// shared suite asks for (destinationstest.Receiver: refusals, 500s, stalls) and 429s
// with rate-limit headers. Nothing here talks to a real service.
package apitest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/mapper"
)

// Answer is a Handler's answer to one request.
type Answer struct {
	Status int
	Header http.Header
	Body   string
	// Accepted are the messages the API kept, as Segment-shaped JSON rebuilt from what
	// the API received (see Segment).
	Accepted []destinationstest.Received
}

// Handler answers one request (its body read) as an API would.
type Handler func(s *Server, r *http.Request, body []byte) Answer

// Request is one request the server answered.
type Request struct {
	Path     string
	Status   int
	Bytes    int
	Accepted int
	Body     []byte
}

// Server is one API on 127.0.0.1. It implements destinationstest.Receiver.
type Server struct {
	URL string

	h   Handler
	srv *httptest.Server

	mu       sync.Mutex
	received []destinationstest.Received
	requests []Request
	refused  map[string]bool
	failNext int
	throttle []Answer
	stall    *stall
	origins  map[string][]mapper.Message
}

type stall struct {
	arrived, release chan struct{}
	arrivedOnce      sync.Once
	releaseOnce      sync.Once
}

// New starts a server answering with h; it stops when the test ends.
func New(t testing.TB, h Handler) *Server {
	s := &Server{h: h, refused: map[string]bool{}, origins: map[string][]mapper.Message{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.handle))
	s.URL = s.srv.URL
	t.Cleanup(s.srv.Close)
	t.Cleanup(s.releaseStall) // runs before Close: held requests end first
	return s
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	st := s.stall
	s.mu.Unlock()
	if st != nil {
		st.arrivedOnce.Do(func() { close(st.arrived) })
		select {
		case <-st.release:
		case <-r.Context().Done():
			return
		}
	}
	s.mu.Lock()
	var a Answer
	switch {
	case s.failNext > 0:
		s.failNext--
		a = Answer{Status: http.StatusInternalServerError, Body: `{"error":"injected failure"}`}
	case len(s.throttle) > 0:
		a = s.throttle[0]
		s.throttle = s.throttle[1:]
	}
	s.mu.Unlock()
	if a.Status == 0 {
		a = s.h(s, r, body)
	}
	s.mu.Lock()
	s.received = append(s.received, a.Accepted...)
	s.requests = append(s.requests, Request{Path: r.URL.Path, Status: a.Status, Bytes: len(body), Accepted: len(a.Accepted), Body: body})
	s.mu.Unlock()
	for k, v := range a.Header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.Status)
	io.WriteString(w, a.Body)
}

// Received returns every message the API kept, in arrival order.
func (s *Server) Received() []destinationstest.Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]destinationstest.Received(nil), s.received...)
}

// Requests returns every request answered so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Capabilities: every fault.
func (s *Server) Capabilities() destinationstest.Capabilities {
	return destinationstest.Capabilities{Refuse: true, Fail: true, Stall: true}
}

// RefuseUsers makes the API refuse the messages of these users, as its contract says it
// refuses invalid messages (per message where it can).
func (s *Server) RefuseUsers(users ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range users {
		s.refused[u] = true
	}
}

// Refused reports whether user's messages are refused.
func (s *Server) Refused(user string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused[user]
}

// FailNext answers the next n requests 500.
func (s *Server) FailNext(n int) {
	s.mu.Lock()
	s.failNext += n
	s.mu.Unlock()
}

// Throttle answers the next requests with these answers (429s with their headers), in
// order, before anything else.
func (s *Server) Throttle(answers ...Answer) {
	s.mu.Lock()
	s.throttle = append(s.throttle, answers...)
	s.mu.Unlock()
}

// Stall holds every later request until release is called.
func (s *Server) Stall() (<-chan struct{}, func()) {
	st := &stall{arrived: make(chan struct{}), release: make(chan struct{})}
	s.mu.Lock()
	s.stall = st
	s.mu.Unlock()
	return st.arrived, s.releaseStall
}

func (s *Server) releaseStall() {
	s.mu.Lock()
	st := s.stall
	s.stall = nil
	s.mu.Unlock()
	if st != nil {
		st.releaseOnce.Do(func() { close(st.release) })
	}
}

// Original returns the message of destinationstest.Messages whose userId is user
// ("u-<prefix>-<i>"). APIs that keep neither a message id nor a time for some messages
// (profile updates, user attributes) are checked by comparing what arrived with the
// mapping of the message it came from: the receiver then reports that message.
func (s *Server) Original(user string) (mapper.Message, bool) {
	rest, ok := strings.CutPrefix(user, "u-")
	if !ok {
		return mapper.Message{}, false
	}
	cut := strings.LastIndexByte(rest, '-')
	if cut < 0 {
		return mapper.Message{}, false
	}
	prefix := rest[:cut]
	i, err := strconv.Atoi(rest[cut+1:])
	if err != nil || i < 0 || i > 100_000 {
		return mapper.Message{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	msgs := s.origins[prefix]
	if i >= len(msgs) {
		msgs = destinationstest.Messages(prefix, max(i+1, 2*len(msgs)))
		s.origins[prefix] = msgs
	}
	if msgs[i].UserID != user {
		return mapper.Message{}, false
	}
	return msgs[i], true
}

// Segment builds the Segment-shaped JSON of a message an API received, for
// destinationstest.CheckSame: fields whose value is nil are left out.
func Segment(typ, id, user, anon, group, event string, body json.RawMessage, timestamp string) destinationstest.Received {
	m := map[string]any{"type": typ, "messageId": id}
	for k, v := range map[string]string{"userId": user, "anonymousId": anon, "groupId": group, "event": event, "timestamp": timestamp} {
		if v != "" {
			m[k] = v
		}
	}
	key := "traits"
	if typ == "track" {
		key = "properties"
	}
	if body != nil {
		m[key] = body
	}
	b, err := json.Marshal(m)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"error":%q}`, err.Error()))
	}
	return destinationstest.Received{ID: id, UserID: user, JSON: b}
}

// Without returns obj (a JSON object) without the given members, numbers kept as text.
func Without(obj json.RawMessage, keys ...string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	for _, k := range keys {
		delete(m, k)
	}
	return json.Marshal(m)
}
