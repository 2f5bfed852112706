package sse

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/rbee-dev/rbee"
)

// ContentType is the media type of an SSE stream.
const ContentType = "text/event-stream"

// Writer sends events on an HTTP response. Token events are batched (see
// FlushInterval); every other event is flushed at once. It is safe for
// concurrent use; Close it before the handler returns.
type Writer struct {
	b *Batcher
}

// NewWriter starts an SSE response (status 200).
func NewWriter(w http.ResponseWriter) *Writer {
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sw := &Writer{b: NewBatcher(w, FlushInterval)}
	_ = sw.b.Write(nil, true) // the headers go out now
	return sw
}

// Close flushes what is pending; the Writer must not be used after.
func (s *Writer) Close() error { return s.b.Close() }

// Send writes one event and flushes it. After a write error every call
// returns that error (the client is gone).
func (s *Writer) Send(ev rbee.Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	return s.SendRaw(ev.Type, b)
}

// SendRaw writes one event with the given name and data (one line of data).
func (s *Writer) SendRaw(name string, data []byte) error {
	var buf bytes.Buffer
	if name != "" {
		buf.WriteString("event: ")
		buf.WriteString(name)
		buf.WriteByte('\n')
	}
	buf.WriteString("data: ")
	buf.Write(data)
	buf.WriteString("\n\n")
	return s.b.Write(buf.Bytes(), name != rbee.EventToken)
}

// Reader reads SSE events.
type Reader struct {
	r *bufio.Reader
}

// NewReader reads events from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

// NextRaw returns the next event's name ("" when the stream gave none) and
// data (data lines joined by "\n"). It returns io.EOF at the end of the
// stream, and io.ErrUnexpectedEOF when the stream ends inside an event.
func (r *Reader) NextRaw() (name string, data []byte, err error) {
	var (
		sawField bool
		lines    [][]byte
	)
	for {
		line, err := r.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A long line: gather it whole.
			full := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.r.ReadSlice('\n')
				full = append(full, line...)
			}
			line = full
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if sawField || len(line) > 0 {
					return "", nil, io.ErrUnexpectedEOF
				}
				return "", nil, io.EOF
			}
			return "", nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if !sawField {
				continue
			}
			return name, bytes.Join(lines, []byte("\n")), nil
		}
		if line[0] == ':' { // comment / keep-alive
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			name, sawField = string(value), true
		case "data":
			lines, sawField = append(lines, append([]byte(nil), value...)), true
		default: // id, retry and unknown fields are ignored
		}
	}
}

// Next returns the next rbee event. Events whose data is not an rbee event
// (a different stream) are an error; unknown event types are returned as
// they are, for the caller to ignore.
func (r *Reader) Next() (rbee.Event, error) {
	name, data, err := r.NextRaw()
	if err != nil {
		return rbee.Event{}, err
	}
	var ev rbee.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		return rbee.Event{}, fmt.Errorf("decode event %q: %w", name, err)
	}
	if ev.Type == "" {
		ev.Type = name
	}
	return ev, nil
}

// Relay forwards every event from r to send until r ends (nil), send fails,
// or r fails. The seed's sse-relay: hive → queen → keeper.
func Relay(r *Reader, send func(rbee.Event) error) error {
	for {
		ev, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		if err := send(ev); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
	}
}

// IsStream reports whether resp carries an SSE stream.
func IsStream(resp *http.Response) bool {
	return strings.HasPrefix(resp.Header.Get("Content-Type"), ContentType)
}

// Copy copies a response body to w as it arrives, flushing after every
// read: a proxied event stream must not sit in a buffer. It stops at the
// first read or write error (a client gone, the stream ended).
func Copy(w http.ResponseWriter, r io.Reader) {
	f, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if f != nil {
				f.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}
