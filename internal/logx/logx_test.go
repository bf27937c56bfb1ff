package logx

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestNewRejectsUnknownLevelAndFormat(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "loud", "text"); err == nil {
		t.Fatal("unknown level accepted")
	}
	if _, err := New(&bytes.Buffer{}, "info", "xml"); err == nil {
		t.Fatal("unknown format accepted")
	}
	var b bytes.Buffer
	l, err := New(&b, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hello", KeyPeer, "aa:bb")
	if !strings.Contains(b.String(), `"peer":"aa:bb"`) {
		t.Fatalf("json log = %q", b.String())
	}
}

func TestLimiterSuppressesAndReports(t *testing.T) {
	var b bytes.Buffer
	l, _ := New(&b, "info", "text")
	lim := NewLimiter(l, time.Second, 2)
	now := time.Unix(1000, 0)
	lim.now = func() time.Time { return now }
	for i := 0; i < 10; i++ {
		lim.Log(slog.LevelWarn, "k", "bad frame")
	}
	if got := strings.Count(b.String(), "bad frame"); got != 2 {
		t.Fatalf("%d lines in the first interval, want 2", got)
	}
	now = now.Add(2 * time.Second)
	lim.Log(slog.LevelWarn, "k", "bad frame")
	if !strings.Contains(b.String(), "suppressed=8") {
		t.Fatalf("suppressed count not reported: %q", b.String())
	}
}
