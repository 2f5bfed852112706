package sse

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
)

func TestRoundTrip(t *testing.T) {
	events := []rbee.Event{
		rbee.Narrate("queen", "job_accepted", "job accepted"),
		{Type: rbee.EventToken, Text: "line one\nline two"},
		{Type: "future-type", Message: "a consumer must skip this"}, // grease
		{Type: rbee.EventDone, Done: &rbee.Done{FinishReason: "stop", CompletionTokens: 3}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := NewWriter(w)
		for _, ev := range events {
			if err := sw.Send(ev); err != nil {
				t.Error(err)
			}
		}
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if !IsStream(resp) {
		t.Fatalf("Content-Type = %q", resp.Header.Get("Content-Type"))
	}
	var got []rbee.Event
	if err := Relay(NewReader(resp.Body), func(ev rbee.Event) error { got = append(got, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(events) {
		t.Fatalf("got %d events, want %d", len(got), len(events))
	}
	if got[1].Text != "line one\nline two" {
		t.Errorf("token text = %q", got[1].Text)
	}
	if got[2].Type != "future-type" {
		t.Errorf("unknown type not passed through: %q", got[2].Type)
	}
	if got[3].Done == nil || got[3].Done.CompletionTokens != 3 {
		t.Errorf("done = %+v", got[3].Done)
	}
}

func TestReaderRaw(t *testing.T) {
	tests := []struct {
		name, in  string
		wantNames []string
		wantData  []string
		wantErr   error
	}{
		{"openai", "data: {\"a\":1}\n\ndata: [DONE]\n\n", []string{"", ""}, []string{`{"a":1}`, "[DONE]"}, io.EOF},
		{"named", "event: token\ndata: x\n\n", []string{"token"}, []string{"x"}, io.EOF},
		{"multiline", "data: a\ndata: b\n\n", []string{""}, []string{"a\nb"}, io.EOF},
		{"comments and ids", ": ping\nid: 4\nretry: 10\ndata: x\n\n", []string{""}, []string{"x"}, io.EOF},
		{"crlf", "data: x\r\n\r\n", []string{""}, []string{"x"}, io.EOF},
		{"cut mid-event", "data: x\n", nil, nil, io.ErrUnexpectedEOF},
		{"long line", "data: " + strings.Repeat("y", 200<<10) + "\n\n", []string{""}, []string{strings.Repeat("y", 200<<10)}, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in))
			for i := range tt.wantData {
				name, data, err := r.NextRaw()
				if err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
				if name != tt.wantNames[i] || string(data) != tt.wantData[i] {
					t.Errorf("event %d: got %q %.40q, want %q %.40q", i, name, data, tt.wantNames[i], tt.wantData[i])
				}
			}
			if _, _, err := r.NextRaw(); !errors.Is(err, tt.wantErr) {
				t.Errorf("end: got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestWriterAfterClientGone(t *testing.T) {
	done := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := NewWriter(w)
		<-r.Context().Done()
		var err error
		for i := 0; i < 100 && err == nil; i++ { // the kernel buffers some writes
			err = sw.Send(rbee.Event{Type: rbee.EventToken, Text: strings.Repeat("x", 4096)})
		}
		done <- err
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Send kept succeeding after the client left")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler never saw the client leave")
	}
}

func BenchmarkSendRead(b *testing.B) {
	pr, pw := io.Pipe()
	rec := &pipeWriter{h: http.Header{}, w: pw}
	go func() {
		sw := NewWriter(rec)
		defer sw.Close()
		for range b.N {
			sw.Send(rbee.Event{Type: rbee.EventToken, Text: "tok"})
		}
		pw.Close()
	}()
	r := NewReader(pr)
	n := 0
	for {
		if _, err := r.Next(); err != nil {
			break
		}
		n++
	}
	if n != b.N {
		b.Fatalf("read %d events, want %d", n, b.N)
	}
}

type pipeWriter struct {
	h http.Header
	w io.Writer
}

func (p *pipeWriter) Header() http.Header         { return p.h }
func (p *pipeWriter) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *pipeWriter) WriteHeader(int)             {}
func (p *pipeWriter) Flush()                      {}
