package logx

import (
	"log/slog"
	"strings"
	"testing"
)

func TestCheckHandlerReportsDuplicateAndUnknownKeys(t *testing.T) {
	var bad []string
	log := slog.New(NewCheckHandler(slog.DiscardHandler, []string{"node"}, func(s string) { bad = append(bad, s) }))

	base := log.With("node", 1, KeyLocal, "aa:aa")
	base.With(KeyComponent, "fastdp").Debug("fine", KeyPeer, "bb:bb", KeyErr, nil)
	if len(bad) != 0 {
		t.Fatalf("clean lines reported: %q", bad)
	}

	// The daemon's old wiring: its own name as peer on the base logger, the remote one per line.
	log.With(KeyPeer, "aa:aa").With(KeyComponent, "ipam").Info("asking for space", KeyPeer, "bb:bb")
	if len(bad) != 1 || !strings.Contains(bad[0], `"peer" appears twice`) {
		t.Fatalf("duplicate peer not reported once: %q", bad)
	}
	bad = nil
	log.Info("x", "remote", "bb:bb")
	log.With("endpoint", "1.2.3.4:5")
	if len(bad) != 2 || !strings.Contains(bad[0], `"remote"`) || !strings.Contains(bad[1], `"endpoint"`) {
		t.Fatalf("unknown keys not reported: %q", bad)
	}
	bad = nil
	log.WithGroup("g").Info("grouped", KeyPeer, 1, KeyPeer, 2) // g.peer twice
	if len(bad) != 1 || !strings.Contains(bad[0], `"g.peer" appears twice`) {
		t.Fatalf("grouped duplicate: %q", bad)
	}
}
