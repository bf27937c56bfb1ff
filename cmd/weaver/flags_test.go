package main

import (
	"os"
	"path/filepath"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFlagsInterspersedWithPeers(t *testing.T) {
	o, err := parseFlags([]string{"--port", "7000", "10.0.0.1", "--nickname", "h1", "10.0.0.2:7000"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Port != 7000 || o.cfg.NickName != "h1" {
		t.Fatalf("port %d nickname %q", o.cfg.Port, o.cfg.NickName)
	}
	if len(o.cfg.Peers) != 2 || o.cfg.Peers[0] != "10.0.0.1" || o.cfg.Peers[1] != "10.0.0.2:7000" {
		t.Fatalf("peers %v", o.cfg.Peers)
	}
}

func TestWeaveEnvironmentTranslates(t *testing.T) {
	o, err := parseFlags([]string{"--conn-limit", "5"}, env(map[string]string{
		"IPALLOC_RANGE": "10.40.0.0/16", "IPALLOC_INIT": "seed=::1", "CONN_LIMIT": "30",
		"WEAVE_MTU": "1337", "WEAVE_NO_FASTDP": "1", "WEAVE_PASSWORD": "s3cret",
		"EXTRA_ARGS": "--log-level debug --no-discovery",
	}))
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.IPAllocRange.String() != "10.40.0.0/16" || c.IPAllocInit != "seed=::1" || c.MTU != 1337 ||
		!c.NoFastDP || string(c.Password) != "s3cret" || !c.NoDiscovery || o.logLevel != "debug" {
		t.Fatalf("environment not applied: %+v level=%s", c, o.logLevel)
	}
	if c.ConnLimit != 5 {
		t.Fatalf("flag must override env: conn limit %d", c.ConnLimit)
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--port", "x"},
		{"--ipalloc-range", "10.0.0.0/33"},
		{"--trusted-subnets", "nonsense"},
		{"--password-file", filepath.Join(t.TempDir(), "missing")},
		{"--no-such-flag"},
	} {
		if _, err := parseFlags(args, env(nil)); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if _, err := parseFlags(nil, env(map[string]string{"CONN_LIMIT": "many"})); err == nil {
		t.Error("bad CONN_LIMIT accepted")
	}
}

func TestPasswordFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(p, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"--password-file", p}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if string(o.cfg.Password) != "hunter2" {
		t.Fatalf("password %q", o.cfg.Password)
	}
}
