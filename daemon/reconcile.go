package daemon

import (
	"sync/atomic"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/logx"
)

// endpointEvents count what the endpoint code refused, undid and repaired, for metrics.
type endpointEvents struct {
	refusedTargets atomic.Uint64 // attach targets that are not network namespaces (or gone)
	persistErrors  atomic.Uint64 // changes refused because the state dir could not be written
	rolledBack     atomic.Uint64 // attaches undone after a failure part-way
	undone         atomic.Uint64 // on start: pending attaches of a killed daemon undone
	forgotten      atomic.Uint64 // on start: endpoints whose interface is gone, released
	adopted        atomic.Uint64 // on start: endpoints found intact and kept
}

func (ev *endpointEvents) snapshot() map[string]uint64 {
	return map[string]uint64{
		"refused_target": ev.refusedTargets.Load(), "persist_error": ev.persistErrors.Load(),
		"rolled_back": ev.rolledBack.Load(), "undone_on_start": ev.undone.Load(),
		"forgotten_on_start": ev.forgotten.Load(), "adopted_on_start": ev.adopted.Load(),
	}
}

// reconcileEndpoints makes the records, the devices and IPAM agree again after a daemon
// was killed (or a container went) while it was not looking. It runs on start, before the
// API serves and before the records' addresses are re-claimed:
//   - a pending attach never finished: its devices (half-made veths: the host end takes its
//     wetmp… peer with it) are removed and its addresses released;
//   - an unconfirmed re-attach's new addresses are taken off the interface and released;
//   - an endpoint whose interface is gone (container gone) is forgotten and its addresses
//     released;
//   - an endpoint found intact is adopted, with its MAC read anew.
//
// Device errors are logged and leave the record, so the next start tries again.
func (d *Daemon) reconcileEndpoints() {
	s := d.endpoints
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for key, e := range s.m {
		if e.ID == api.ExposeID {
			continue // the bridge's own addresses: kept with the bridge
		}
		log := d.log.With(logx.KeyNetns, e.NetnsPath, logx.KeyContainer, e.ID)
		// drop removes what is left of e and releases its addresses; false when the veth
		// cannot go (the record stays for the next start).
		drop := func(why string) bool {
			if err := d.links.Delete(e.HostIf); err != nil {
				log.Warn("cannot remove the veth of "+why, logx.KeyErr, err)
				return false
			}
			d.release(e.ID, e.IfName, nil)
			delete(s.m, key)
			changed = true
			return true
		}
		if e.Pending {
			if drop("an unfinished attach") {
				d.epEvents.undone.Add(1)
				log.Info("undid an attach that a stopped daemon left unfinished")
			}
			continue
		}
		got, ok, err := d.links.Inspect(e.NetnsPath, e.IfName)
		if err == nil && ok {
			ok, err = d.links.Exists(e.HostIf)
		}
		if err != nil {
			log.Warn("cannot inspect endpoint; keeping it", logx.KeyErr, err)
			continue
		}
		if !ok {
			if drop("a gone endpoint") {
				d.epEvents.forgotten.Add(1)
				log.Info("forgot an endpoint whose interface is gone; addresses released", logx.KeyCIDR, prefixesToStrings(e.CIDRs))
			}
			continue
		}
		if len(e.Adding) > 0 {
			if err := d.links.Detach(e.NetnsPath, e.IfName, e.Adding); err != nil {
				log.Warn("cannot remove the addresses of an unfinished attach", logx.KeyErr, err)
				continue
			}
			d.release(e.ID, e.IfName, e.Adding)
			d.epEvents.undone.Add(1)
		}
		cp := *e
		cp.Adding = nil
		if got.MAC != nil {
			cp.MAC = got.MAC.String()
		}
		if cp.MAC != e.MAC || len(e.Adding) > 0 {
			changed = true
		}
		s.m[key] = &cp
		d.epEvents.adopted.Add(1)
	}
	if changed {
		if err := s.saveLocked(); err != nil {
			// In memory the records are right; on disk the next start repeats the same work.
			d.log.Warn("cannot rewrite the endpoint records after reconciling", logx.KeyErr, err)
		}
	}
}
