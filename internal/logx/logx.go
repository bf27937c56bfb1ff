package logx

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// New returns a logger writing text (format "text" or "") or JSON ("json") at level
// ("debug", "info", "warn", "error").
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "", "info":
		lv = slog.LevelInfo
	case "debug":
		lv = slog.LevelDebug
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("unknown log format %q (want text or json)", format)
	}
}

// Discard returns a logger that drops everything (for tests and benchmarks).
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Limiter rate-limits log lines on per-packet paths: at most burst lines per key per
// interval; the number suppressed is reported on the next line that gets through.
type Limiter struct {
	log      *slog.Logger
	interval time.Duration
	burst    int
	now      func() time.Time

	mu   sync.Mutex
	keys map[string]*limitState
}

type limitState struct {
	start      time.Time
	count      int
	suppressed int
}

// NewLimiter returns a Limiter over log.
func NewLimiter(log *slog.Logger, interval time.Duration, burst int) *Limiter {
	return &Limiter{log: log, interval: interval, burst: burst, now: time.Now, keys: make(map[string]*limitState)}
}

// Log logs msg at level unless key has used its burst in the current interval.
func (l *Limiter) Log(level slog.Level, key, msg string, args ...any) {
	now := l.now()
	l.mu.Lock()
	st := l.keys[key]
	if st == nil || now.Sub(st.start) >= l.interval {
		if st == nil {
			if len(l.keys) > 4096 {
				clear(l.keys) // bound memory against keys derived from hostile input
			}
			st = &limitState{}
			l.keys[key] = st
		}
		if st.suppressed > 0 {
			args = append(args, KeySuppressed, st.suppressed)
		}
		st.start, st.count, st.suppressed = now, 0, 0
	}
	st.count++
	if st.count > l.burst {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.log.Log(context.Background(), level, msg, args...)
}
