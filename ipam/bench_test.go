package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkAllocate measures Allocate plus Release on one ready allocator, with the bbolt
// store (a synced commit per call, as in production) and with the in-memory store (the
// allocator's own cost), and reports p50/p99 latencies of Allocate.
func BenchmarkAllocate(b *testing.B) {
	for _, store := range []string{"bolt", "mem"} {
		b.Run(store, func(b *testing.B) {
			n := newFakeNet(1)
			cfg := n.config(1, "consensus", nil)
			cfg.Range = DefaultRange
			if store == "bolt" {
				cfg.DBPath = filepath.Join(b.TempDir(), "ipam.db")
			}
			a := n.start(b, cfg)
			defer a.Close()
			a.Prime()
			ctx := context.Background()
			// A realistic standing population, so the free set is fragmented.
			for i := range 2000 {
				if _, err := a.Allocate(ctx, fmt.Sprintf("base%d", i), "ethwe", netip.Prefix{}); err != nil {
					b.Fatal(err)
				}
				if i%3 == 0 {
					_, _ = a.Release(fmt.Sprintf("base%d", i), "ethwe")
				}
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("c%d", i)
				t0 := time.Now()
				if _, err := a.Allocate(ctx, id, "ethwe", netip.Prefix{}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				if _, err := a.Release(id, "ethwe"); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}
