package daemon

import (
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/mesh"
)

// report assembles the API's view from the components' own status snapshots.
func (d *Daemon) report() api.Report {
	rep := api.Report{
		Version: d.cfg.Version,
		Ready:   d.isReady(),
		Bridge:  api.Bridge{Name: d.cfg.Bridge, TAP: d.cfg.TAP, MTU: d.mtu, MAC: d.name.String()},
		Router: api.Router{
			Name: d.name.String(), NickName: d.cfg.NickName, UID: d.uid, Port: d.cfg.Port,
			Encryption: len(d.cfg.Password) > 0, Discovery: !d.cfg.NoDiscovery,
			Peers: []api.Peer{}, Connections: []api.Connection{}, Targets: []string{},
			TrustedSubnets: prefixesToStrings(d.cfg.TrustedSubnets),
		},
	}
	if d.endpoints != nil {
		rep.Endpoints = d.endpointList()
	}
	if d.mesh == nil {
		return rep
	}
	st := d.mesh.Status()
	rep.Ready = rep.Ready && st.Ready
	liveness := make(map[mesh.PeerName]string, len(st.Liveness))
	for _, m := range st.Liveness {
		liveness[m.Peer] = m.State
	}
	for _, p := range st.Peers {
		ap := api.Peer{Name: p.Name.String(), NickName: p.NickName, UID: p.UID, Version: p.Version,
			Connections: []api.PeerConnection{}, Liveness: liveness[p.Name]}
		for _, c := range p.Connections {
			ap.Connections = append(ap.Connections, api.PeerConnection{
				Name: c.Name.String(), Address: c.Address, Outbound: c.Outbound, Established: c.Established})
		}
		rep.Router.Peers = append(rep.Router.Peers, ap)
	}
	for _, c := range st.Connections {
		ac := api.Connection{
			Address: c.Address, Outbound: c.Outbound, State: c.State, Info: c.Info,
			Encrypted: c.Encrypted, NickName: c.NickName,
		}
		if c.Peer != mesh.UnknownPeerName {
			ac.Peer = c.Peer.String()
		}
		if !c.NextRetry.IsZero() {
			t := c.NextRetry.Truncate(time.Second)
			ac.NextRetry = &t
		}
		rep.Router.Connections = append(rep.Router.Connections, ac)
	}
	if d.dp != nil {
		d.dp.annotateConnections(rep.Router.Connections)
	}
	rep.Router.Targets = append(rep.Router.Targets, st.Targets...)
	rep.Router.Routes = []api.Route{}
	for _, r := range st.Routes {
		rep.Router.Routes = append(rep.Router.Routes, api.Route{Dest: r.Dest.String(), Via: r.Via.String()})
	}
	for _, m := range st.Liveness {
		rep.Router.Members = append(rep.Router.Members, api.Member{Peer: m.Peer.String(), State: m.State, Since: m.Since})
	}
	rep.IPAM = d.ipamReport(st)
	return rep
}
