package logx

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
)

// Keys returns the vocabulary: the values of the Key* constants.
func Keys() []string {
	return []string{KeyComponent, KeyLocal, KeyPeer, KeyNickname, KeyUID, KeyConn, KeyOutbound, KeyAddr,
		KeyPort, KeyOverlay, KeyNetns, KeyDevice, KeyMAC, KeyContainer, KeyCIDR, KeyIP, KeyPath, KeyVersion, KeyMTU,
		KeyPMTU, KeyCipher, KeyEncrypted, KeyMode, KeyState, KeyReason, KeyFrom, KeyCount, KeyLost,
		KeyTotal, KeyDuration, KeyStats, KeyErr, KeySuppressed}
}

// NewCheckHandler is for tests: it passes every record (at every level) to h and calls bad
// with a description of each record that carries a key twice (its logger's With attributes
// included: a component adding a key its caller already set, as the daemon's own peer name
// did) or a key outside Keys and extra. The static TestLogKeys sees call sites; this sees
// what the wiring of loggers makes of them.
func NewCheckHandler(h slog.Handler, extra []string, bad func(string)) slog.Handler {
	return &checkHandler{inner: h, allowed: append(Keys(), extra...), bad: bad}
}

type checkHandler struct {
	inner   slog.Handler
	allowed []string
	bad     func(string)
	prefix  string   // the open groups, "g1.g2."
	keys    []string // keys added by With, prefixed
}

func (c *checkHandler) Enabled(context.Context, slog.Level) bool { return true }

func (c *checkHandler) Handle(ctx context.Context, r slog.Record) error {
	seen := slices.Clone(c.keys)
	var problems []string
	r.Attrs(func(a slog.Attr) bool {
		problems = c.check(a, c.prefix, &seen, problems)
		return true
	})
	for _, p := range problems {
		c.bad(fmt.Sprintf("log line %q: %s", r.Message, p))
	}
	if c.inner.Enabled(ctx, r.Level) {
		return c.inner.Handle(ctx, r)
	}
	return nil
}

func (c *checkHandler) check(a slog.Attr, prefix string, seen *[]string, problems []string) []string {
	if a.Equal(slog.Attr{}) {
		return problems // slog drops empty attributes
	}
	if a.Value.Kind() == slog.KindGroup {
		sub := prefix
		if a.Key != "" {
			sub = prefix + a.Key + "."
		}
		for _, g := range a.Value.Group() {
			problems = c.check(g, sub, seen, problems)
		}
		return problems
	}
	if !slices.Contains(c.allowed, a.Key) {
		problems = append(problems, fmt.Sprintf("key %q is not in the vocabulary (internal/logx/keys.go)", a.Key))
	}
	if k := prefix + a.Key; slices.Contains(*seen, k) {
		problems = append(problems, fmt.Sprintf("key %q appears twice", k))
	} else {
		*seen = append(*seen, k)
	}
	return problems
}

func (c *checkHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *c
	n.inner = c.inner.WithAttrs(attrs)
	n.keys = slices.Clone(c.keys)
	var problems []string
	for _, a := range attrs {
		problems = c.check(a, c.prefix, &n.keys, problems)
	}
	for _, p := range problems {
		c.bad("logger With: " + p)
	}
	return &n
}

func (c *checkHandler) WithGroup(name string) slog.Handler {
	n := *c
	n.inner = c.inner.WithGroup(name)
	if name != "" {
		n.prefix = c.prefix + name + "."
	}
	return &n
}
