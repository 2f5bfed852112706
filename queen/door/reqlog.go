package door

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// reqLogMax is the size at which the request log is rotated (the old one
// is kept as .1).
const reqLogMax = 16 << 20

// requestEntry is one line of the front door's request log.
type requestEntry struct {
	Time       time.Time `json:"time"`
	Model      string    `json:"model"`
	Replica    string    `json:"replica,omitempty"` // hive/worker
	Key        string    `json:"key,omitempty"`     // the API key's id, never the key
	TokensIn   int       `json:"tokens_in"`
	TokensOut  int       `json:"tokens_out"`
	TTFTMS     float64   `json:"ttft_ms"`
	DurationMS float64   `json:"duration_ms"`
	Status     int       `json:"status"`
}

// reqLog appends JSON lines to a file, rotating it past reqLogMax. A
// write that fails is dropped: the log must never fail a request.
type reqLog struct {
	path string
	mu   sync.Mutex
	f    *os.File
	size int64
}

func (l *reqLog) write(e requestEntry) {
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil || l.size+int64(len(b)) > reqLogMax {
		if err := l.reopen(l.f != nil); err != nil {
			return
		}
	}
	n, _ := l.f.Write(b)
	l.size += int64(n)
}

func (l *reqLog) reopen(rotate bool) error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	if rotate {
		if err := os.Rename(l.path, l.path+".1"); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("rotate request log: %w", err)
		}
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("request log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("request log: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

func (l *reqLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
