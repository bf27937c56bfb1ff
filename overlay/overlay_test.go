package overlay

import "testing"

func TestNullDropsAndCounts(t *testing.T) {
	var n Null
	n.Forward(1, []Frame{{Src: 1, Dst: 2, Data: []byte{1}}, {Src: 1, Dst: 2}})
	if got := n.Snapshot(); got.DropsOut != 2 || got.FramesOut != 0 {
		t.Fatalf("stats %+v, want 2 drops", got)
	}
	if n.MaxFrame(2) != 0 {
		t.Fatal("null overlay claims to reach a peer")
	}
}

func TestCountersAdd(t *testing.T) {
	var c Counters
	c.AddIn(3, 300, 1)
	c.AddOut(2, 200, 0)
	want := Stats{FramesIn: 3, BytesIn: 300, DropsIn: 1, FramesOut: 2, BytesOut: 200}
	if got := c.Snapshot(); got != want {
		t.Fatalf("got %+v want %+v", got, want)
	}
}
