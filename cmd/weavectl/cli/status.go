package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/weavemesh/weave/api"
)

func statusNow(c *ctx) (api.Status, error) {
	cx, cancel := timeout(2 * time.Second)
	defer cancel()
	return c.client.Status(cx)
}

func report(c *ctx) (api.Report, error) {
	cx, cancel := timeout(10 * time.Second)
	defer cancel()
	return c.client.Report(cx)
}

func runReport(c *ctx, args []string) error {
	if len(args) > 0 {
		return usageError{"report takes no arguments"}
	}
	r, err := report(c)
	if err != nil {
		return err
	}
	return printJSON(c.env.Stdout, r)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	return enc.Encode(v)
}

func runStatus(c *ctx, args []string) error {
	flags, pos, err := splitFlags(args, "json")
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{"at most one section"}
	}
	section := ""
	if len(pos) == 1 {
		section = pos[0]
	}
	r, err := report(c)
	if err != nil {
		return err
	}
	w := c.env.Stdout
	asJSON := flags["json"]
	switch section {
	case "":
		if asJSON {
			return printJSON(w, r)
		}
		printSummary(w, r)
	case "peers":
		if asJSON {
			return printJSON(w, r.Router.Peers)
		}
		printPeers(w, r)
	case "connections":
		if asJSON {
			return printJSON(w, r.Router.Connections)
		}
		printConnections(w, r)
	case "ipam":
		if r.IPAM == nil {
			return fmt.Errorf("IPAM is disabled on this router")
		}
		if asJSON {
			return printJSON(w, r.IPAM)
		}
		printIPAM(w, r)
	case "targets":
		if asJSON {
			return printJSON(w, r.Router.Targets)
		}
		for _, t := range r.Router.Targets {
			fmt.Fprintln(w, t)
		}
	default:
		return usageError{fmt.Sprintf("unknown section %q", section)}
	}
	return nil
}

func enabled(b bool) string {
	if b {
		return "enabled"
	}
	return "disabled"
}

func peerLabel(name, nick string) string {
	if nick == "" {
		return name
	}
	return name + "(" + nick + ")"
}

func printSummary(w io.Writer, r api.Report) {
	established := 0
	for _, c := range r.Router.Connections {
		if c.State == api.StateEstablished {
			established++
		}
	}
	peerConns := 0
	for _, p := range r.Router.Peers {
		for _, c := range p.Connections {
			if c.Established {
				peerConns++
			}
		}
	}
	trusted := "none"
	if len(r.Router.TrustedSubnets) > 0 {
		trusted = strings.Join(r.Router.TrustedSubnets, ",")
	}
	row := func(k, v string) { fmt.Fprintf(w, "%15s: %s\n", k, v) }
	row("Version", r.Version)
	fmt.Fprintln(w)
	row("Service", "router")
	row("Name", peerLabel(r.Router.Name, r.Router.NickName))
	row("Ready", fmt.Sprint(r.Ready))
	row("Encryption", enabled(r.Router.Encryption))
	row("PeerDiscovery", enabled(r.Router.Discovery))
	row("Targets", fmt.Sprint(len(r.Router.Targets)))
	row("Connections", fmt.Sprintf("%d (%d established)", len(r.Router.Connections), established))
	row("Peers", fmt.Sprintf("%d (with %d established connections)", len(r.Router.Peers), peerConns))
	row("TrustedSubnets", trusted)
	if r.Bridge.Name != "" {
		row("Bridge", fmt.Sprintf("%s (mtu %d)", r.Bridge.Name, r.Bridge.MTU))
	}
	if r.IPAM != nil {
		fmt.Fprintln(w)
		row("Service", "ipam")
		row("Status", r.IPAM.Status)
		row("Range", r.IPAM.Range)
		row("DefaultSubnet", r.IPAM.DefaultSubnet)
	}
}

func printPeers(w io.Writer, r api.Report) {
	for _, p := range r.Router.Peers {
		fmt.Fprintln(w, peerLabel(p.Name, p.NickName))
		for _, c := range p.Connections {
			dir := "<-"
			if c.Outbound {
				dir = "->"
			}
			state := "pending"
			if c.Established {
				state = "established"
			}
			nick := ""
			for _, q := range r.Router.Peers {
				if q.Name == c.Name {
					nick = q.NickName
				}
			}
			fmt.Fprintf(w, "   %s %-21s %-40s %s\n", dir, c.Address, peerLabel(c.Name, nick), state)
		}
	}
}

func printConnections(w io.Writer, r api.Report) {
	for _, c := range r.Router.Connections {
		dir := "<-"
		if c.Outbound {
			dir = "->"
		}
		var info []string
		if c.Overlay != "" {
			info = append(info, c.Overlay)
		}
		if c.Peer != "" {
			info = append(info, peerLabel(c.Peer, c.NickName))
		}
		if c.State == api.StateEstablished || c.State == api.StatePending {
			if c.Encrypted {
				info = append(info, "encrypted")
			} else {
				info = append(info, "unencrypted")
			}
			if c.MTU > 0 {
				info = append(info, fmt.Sprintf("mtu=%d", c.MTU))
			}
		}
		if c.Info != "" {
			info = append(info, c.Info)
		}
		if c.NextRetry != nil {
			info = append(info, "retry: "+c.NextRetry.Format(time.RFC3339))
		}
		fmt.Fprintf(w, "%s %-21s %-11s %s\n", dir, c.Address, c.State, strings.Join(info, " "))
	}
}

func printIPAM(w io.Writer, r api.Report) {
	ip := r.IPAM
	if ip.Status != "ready" {
		fmt.Fprintf(w, "status: %s\n", ip.Status)
	}
	if ip.Error != "" {
		fmt.Fprintf(w, "error: %s\n", ip.Error)
	}
	for _, o := range ip.Owners {
		label := peerLabel(o.Peer, o.NickName)
		active := ""
		if o.Self {
			active = fmt.Sprintf(" - %d used", ip.ActiveIPs)
		}
		unreachable := ""
		if !o.Reachable && !o.Self {
			unreachable = " - unreachable!"
		}
		fmt.Fprintf(w, "%-40s %8d IPs (%04.1f%% of total)%s%s\n", label, o.Addresses, o.Percent, active, unreachable)
	}
	for _, c := range ip.Conflicts {
		fmt.Fprintf(w, "conflict: %s\n", c)
	}
}
