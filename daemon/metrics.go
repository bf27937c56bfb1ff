package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weavemesh/weave/api"
)

// Metric names keep Weave's, so existing dashboards (kube-prometheus ships one) still work.
var (
	descConnections = prometheus.NewDesc("weave_connections",
		"Number of peer connections by state, overlay type and encryption.",
		[]string{"state", "type", "encryption"}, nil)
	descTerminations = prometheus.NewDesc("weave_connection_terminations_total",
		"Number of peer connections that ended.", nil, nil)
	descMeshErrors = prometheus.NewDesc("weave_mesh_refused_total",
		"Control-plane input and connections refused, by reason.", []string{"reason"}, nil)
	descPeers = prometheus.NewDesc("weave_peers",
		"Number of peers in the topology, this one included.", nil, nil)
	descEndpoints = prometheus.NewDesc("weave_endpoints",
		"Number of interfaces attached to the bridge (the exposed host included).", nil, nil)
	descEndpointEvents = prometheus.NewDesc("weave_endpoint_events_total",
		"Attach and detach events: targets refused (not a network namespace), changes refused because the state dir could not be written, attaches rolled back, and, on start, unfinished attaches undone, endpoints forgotten because their interface is gone, endpoints adopted.",
		[]string{"event"}, nil)
	descAPIRefused = prometheus.NewDesc("weave_api_refused_total",
		"Control API requests refused (too large, malformed JSON, unknown field, trailing data, invalid values), by reason.",
		[]string{"reason"}, nil)
	descReady = prometheus.NewDesc("weave_ready",
		"1 when the router is ready.", nil, nil)
)

var (
	descIPs = prometheus.NewDesc("weave_ips",
		"Number of addresses in use on this peer.", []string{"state"}, nil)
	descMaxIPs = prometheus.NewDesc("weave_max_ips",
		"Size of the IP allocation range.", nil, nil)
	descUnreachable = prometheus.NewDesc("weave_ipam_unreachable_count",
		"Number of peers owning address space that are unreachable.", nil, nil)
	descUnreachablePct = prometheus.NewDesc("weave_ipam_unreachable_percentage",
		"Percentage of the range owned by unreachable peers.", nil, nil)
	descPending = prometheus.NewDesc("weave_ipam_pending_allocates",
		"Allocation requests waiting for the ring or for space.", nil, nil)
	descIPAMRefused = prometheus.NewDesc("weave_ipam_refused_total",
		"IPAM input refused or in conflict, by reason.", []string{"reason"}, nil)
	descSleeveRefused = prometheus.NewDesc("weave_sleeve_refused_total",
		"Datagrams or super-frames the sleeve refused, by reason.", []string{"reason"}, nil)
	descFastdpRefused = prometheus.NewDesc("weave_fastdp_refused_total",
		"VXLAN datagrams dropped on the fastdp port because their sender is not a peer fastdp runs with, by reason.",
		[]string{"reason"}, nil)
	descGSOBackoffs = prometheus.NewDesc("weave_sleeve_gso_backoffs_total",
		"Times a peer reported lost super-frames and the sleeve sent it cut TCP segments for a while instead.", nil, nil)
	descPMTUShrunk = prometheus.NewDesc("weave_sleeve_pmtu_shrunk_total",
		"Times the sleeve's mid-flow check of a connection's path MTU found it had shrunk silently, and lowered it.", nil, nil)
	descL2SwitchEvents = prometheus.NewDesc("weave_router_frames_total",
		"Frames the L2 switch (package l2switch) relayed, dropped, answered with ICMP, fragmented, left to the kernel path, or passed as whole or cut TCP super-frames, by event.",
		[]string{"event"}, nil)
)

// overlayDescs are the per-overlay frame, byte and drop counters: weave_<overlay>_<name>.
func overlayDescs(ov string) (frames, bytes, drops *prometheus.Desc) {
	return prometheus.NewDesc("weave_"+ov+"_frames_total", "Frames the "+ov+" overlay carried, by direction.", []string{"direction"}, nil),
		prometheus.NewDesc("weave_"+ov+"_bytes_total", "Bytes of frames the "+ov+" overlay carried, by direction.", []string{"direction"}, nil),
		prometheus.NewDesc("weave_"+ov+"_drops_total", "Frames the "+ov+" overlay dropped (malformed, replayed, forged, no route, oversize), by direction.", []string{"direction"}, nil)
}

// collector computes the metrics from the components' status at scrape time, so they can
// never drift from what `weavectl status` shows.
type collector struct{ d *Daemon }

// Describe sends nothing: the collector is "unchecked", because the overlays' metrics depend
// on which overlays run.
func (c collector) Describe(chan<- *prometheus.Desc) {}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	rep := c.d.report()
	type key struct{ state, typ, enc string }
	counts := map[key]int{}
	// Every state is reported, zero included, so that alerts on a state that empties work.
	for _, s := range []string{api.StateEstablished, api.StatePending, api.StateConnecting, api.StateRetrying, api.StateFailed} {
		counts[key{s, "unknown", ""}] += 0
	}
	for _, cn := range rep.Router.Connections {
		typ := cn.Overlay
		if typ == "" {
			typ = "unknown"
		}
		enc := ""
		if cn.Encrypted {
			enc = "yes"
		}
		counts[key{cn.State, typ, enc}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descConnections, prometheus.GaugeValue, float64(n), k.state, k.typ, k.enc)
	}
	ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(len(rep.Router.Peers)))
	ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(len(rep.Endpoints)))
	for event, v := range c.d.epEvents.snapshot() {
		ch <- prometheus.MustNewConstMetric(descEndpointEvents, prometheus.CounterValue, float64(v), event)
	}
	ready := 0.0
	if rep.Ready {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready)
	for reason, v := range c.d.apiRefused.snapshot() {
		ch <- prometheus.MustNewConstMetric(descAPIRefused, prometheus.CounterValue, float64(v), reason)
	}
	if c.d.dp != nil {
		for ov, st := range c.d.dp.stats() {
			f, b, dr := overlayDescs(ov)
			for _, m := range []struct {
				desc    *prometheus.Desc
				in, out uint64
			}{{f, st.FramesIn, st.FramesOut}, {b, st.BytesIn, st.BytesOut}, {dr, st.DropsIn, st.DropsOut}} {
				ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.in), "in")
				ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.out), "out")
			}
		}
		for reason, v := range c.d.dp.sleeveRefused() {
			ch <- prometheus.MustNewConstMetric(descSleeveRefused, prometheus.CounterValue, float64(v), reason)
		}
		if n, ok := c.d.dp.fastdpRefused(); ok {
			ch <- prometheus.MustNewConstMetric(descFastdpRefused, prometheus.CounterValue, float64(n), "unknown_source")
		}
		ss := c.d.dp.sleeve.Stats()
		ch <- prometheus.MustNewConstMetric(descGSOBackoffs, prometheus.CounterValue, float64(ss.GSOBackoffs))
		ch <- prometheus.MustNewConstMetric(descPMTUShrunk, prometheus.CounterValue, float64(ss.PMTUShrunk))
		rs := c.d.dp.l2switchStats()
		for event, v := range map[string]uint64{
			"relayed": rs.Relayed, "no_route": rs.NoRoute, "oversize": rs.Oversize, "icmp_sent": rs.ICMPSent,
			"fragmented": rs.Fragmented, "malformed": rs.Malformed, "kernel_carried": rs.KernelCarried,
			"gso_whole": rs.GSOWhole, "gso_cut": rs.GSOCut,
		} {
			ch <- prometheus.MustNewConstMetric(descL2SwitchEvents, prometheus.CounterValue, float64(v), event)
		}
	}
	if c.d.ipam != nil {
		n := c.d.ipam.Counts()
		ch <- prometheus.MustNewConstMetric(descIPs, prometheus.GaugeValue, float64(n.LocalUsed), "local-used")
		ch <- prometheus.MustNewConstMetric(descMaxIPs, prometheus.GaugeValue, float64(n.MaxIPs))
		ch <- prometheus.MustNewConstMetric(descUnreachable, prometheus.GaugeValue, float64(n.UnreachablePeers))
		pct := 0.0
		if n.MaxIPs > 0 {
			pct = 100 * float64(n.UnreachableAddresses) / float64(n.MaxIPs)
		}
		ch <- prometheus.MustNewConstMetric(descUnreachablePct, prometheus.GaugeValue, pct)
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(n.Pending))
		for reason, v := range map[string]uint64{
			"conflict": n.Conflicts, "rejected_update": n.RejectedUpdates,
			"bad_message": n.BadMessages, "persist_error": n.PersistErrors,
			"bad_member_record": n.BadMemberRecords,
		} {
			ch <- prometheus.MustNewConstMetric(descIPAMRefused, prometheus.CounterValue, float64(v), reason)
		}
	}
	if c.d.mesh != nil {
		st := c.d.mesh.Status().Stats
		ch <- prometheus.MustNewConstMetric(descTerminations, prometheus.CounterValue, float64(st.Terminations))
		for reason, v := range map[string]uint64{
			"malformed_message":  st.MalformedMessages,
			"connection_refused": st.ConnectionsRefused,
			"unknown_channel":    st.UnknownChannel,
			"no_route":           st.NoRoute,
			"dropped_send":       st.DroppedSends,
			"self_claim":         st.SelfClaims,
		} {
			ch <- prometheus.MustNewConstMetric(descMeshErrors, prometheus.CounterValue, float64(v), reason)
		}
		// Connections refused before, during or right after the handshake, by reason.
		for reason, v := range c.d.mesh.Refusals() {
			ch <- prometheus.MustNewConstMetric(descMeshErrors, prometheus.CounterValue, float64(v), reason)
		}
	}
}

// serveMetrics serves GET /metrics on the configured address; a registry per daemon keeps
// several routers in one process (tests) apart.
func (d *Daemon) serveMetrics() error {
	if d.cfg.MetricsAddr == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: nil}))
	ln, err := net.Listen("tcp", d.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", d.cfg.MetricsAddr, err)
	}
	d.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := d.metricsSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.fail(fmt.Errorf("metrics server: %w", err))
		}
	}()
	return nil
}
