package netlab

import (
	"os"
	"strconv"
	"testing"
	"time"
)

func TestParsePing(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    PingResult
		wantErr bool
	}{
		{
			name: "all replies",
			out: "PING 10.201.0.2 (10.201.0.2) 56(84) bytes of data.\n\n--- 10.201.0.2 ping statistics ---\n" +
				"3 packets transmitted, 3 received, 0% packet loss, time 102ms\nrtt min/avg/max/mdev = 0.042/0.128/0.215/0.086 ms\n",
			want: PingResult{Sent: 3, Received: 3, Min: 42 * time.Microsecond, Avg: 128 * time.Microsecond,
				Max: 215 * time.Microsecond, Mdev: 86 * time.Microsecond},
		},
		{
			name: "partial loss",
			out:  "4 packets transmitted, 1 received, 75% packet loss, time 3ms\nrtt min/avg/max/mdev = 1.000/1.000/1.000/0.000 ms\n",
			want: PingResult{Sent: 4, Received: 1, Loss: 0.75, Min: time.Millisecond, Avg: time.Millisecond, Max: time.Millisecond},
		},
		{
			name: "no reply",
			out:  "2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1003ms\n",
			want: PingResult{Sent: 2, Loss: 1},
		},
		{name: "no summary", out: "ping: connect: Network is unreachable\n", wantErr: true},
		{name: "more received than sent", out: "1 packets transmitted, 2 received\n", wantErr: true},
		{name: "replies without rtt", out: "1 packets transmitted, 1 received\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePing([]byte(tt.out))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parsePing error = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("parsePing = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// FuzzParsePing: ping output is text from another program; whatever it says must not panic
// the parser or yield impossible numbers.
func FuzzParsePing(f *testing.F) {
	f.Add([]byte("3 packets transmitted, 3 received, 0% packet loss\nrtt min/avg/max/mdev = 0.042/0.128/0.215/0.086 ms\n"))
	f.Add([]byte("2 packets transmitted, 0 received, +2 errors, 100% packet loss"))
	f.Add([]byte("99999999999999999999 packets transmitted, 1 received\n= 1/2/3/4 ms"))
	f.Add([]byte("1 packets transmitted, 1 received\n= 9999999999999999999999.5/1/1/1 ms"))
	f.Fuzz(func(t *testing.T, out []byte) {
		r, err := parsePing(out)
		if err != nil {
			return
		}
		if r.Sent <= 0 || r.Received < 0 || r.Received > r.Sent || r.Loss < 0 || r.Loss > 1 || r.Min < 0 || r.Avg < 0 {
			t.Fatalf("impossible result %+v from %q", r, out)
		}
	})
}

func TestPrefixRoundTrip(t *testing.T) {
	for _, pid := range []int{1, 77, os.Getpid(), 1 << 22} {
		p, err := newPrefix(pid)
		if err != nil {
			t.Fatal(err)
		}
		if len(p)+len("-h12-c1234567") > 64 || len(p) > 13 {
			t.Fatalf("prefix %q too long", p)
		}
		gotPrefix, gotPID, ok := parsePrefix(PrefixRoot, p+"-h3-c1")
		if !ok || gotPrefix != p || gotPID != pid {
			t.Fatalf("parsePrefix(%q) = %q, %d, %v; want %q, %d", p+"-h3-c1", gotPrefix, gotPID, ok, p, pid)
		}
	}
	for _, name := range []string{"wl", "wl-h1", "wlab-h1", "wlABCD12-h1", "wlabcd-h1", "xyabcd12-h1", "wlabcd0-h1", "wlabcd" + strconv.FormatInt(1<<40, 36)} {
		if p, pid, ok := parsePrefix(PrefixRoot, name); ok {
			t.Errorf("parsePrefix(%q) accepted: %q %d", name, p, pid)
		}
	}
}

func TestSweepRejectsAmbiguousRoots(t *testing.T) {
	for _, root := range []string{"", "w", "W1", "wl-"} {
		if err := Sweep(root); err == nil {
			t.Errorf("Sweep(%q) accepted", root)
		}
	}
}

func TestParseStartTime(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	stat := "4242 (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
	got, err := parseStartTime([]byte(stat))
	if err != nil || got != 987654 {
		t.Fatalf("parseStartTime = %d, %v; want 987654", got, err)
	}
	if _, err := parseStartTime([]byte("4242 (x) S 1")); err == nil {
		t.Fatal("short stat accepted")
	}
	self, err := procStartTime(os.Getpid())
	if err != nil || self == 0 {
		t.Fatalf("procStartTime(self) = %d, %v", self, err)
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 5 100 1"))
	f.Add([]byte(")"))
	f.Add([]byte("1 (x) " + "1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 -5"))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = parseStartTime(b) })
}

func TestValidate(t *testing.T) {
	bad := []Options{
		{Hosts: 0},
		{Hosts: 201},
		{Hosts: 2, MTU: 100},
		{Hosts: 2, NAT: []int{2}},
		{Hosts: 2, NAT: []int{-1}},
		{Hosts: 2, NAT: []int{1, 1}},
	}
	for _, o := range bad {
		if err := validate(o); err == nil {
			t.Errorf("validate(%+v) accepted", o)
		}
	}
	if err := validate(Options{Hosts: 3, MTU: 1400, NAT: []int{0, 2}}); err != nil {
		t.Errorf("validate rejected a good lab: %v", err)
	}
}
