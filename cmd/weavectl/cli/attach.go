package cli

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/weavemesh/weave/api"
)

// splitCIDRs separates leading CIDR arguments from the final TARGET.
func splitCIDRs(args []string, needTarget bool) (cidrs []string, target string, err error) {
	for i, a := range args {
		if _, perr := netip.ParsePrefix(a); perr == nil {
			cidrs = append(cidrs, a)
			continue
		}
		if strings.Contains(a, "/") && !strings.HasPrefix(a, "/") {
			return nil, "", usageError{fmt.Sprintf("bad CIDR %q", a)}
		}
		if !needTarget || i != len(args)-1 {
			return nil, "", usageError{fmt.Sprintf("unexpected argument %q", a)}
		}
		target = a
	}
	if needTarget && target == "" {
		return nil, "", usageError{"no TARGET given (a netns name, a netns path or a PID)"}
	}
	return cidrs, target, nil
}

func printCIDRs(c *ctx, ep api.Endpoint) {
	for _, cidr := range ep.CIDRs {
		fmt.Fprintln(c.env.Stdout, cidr)
	}
}

func runAttach(c *ctx, args []string) error {
	cidrs, target, err := splitCIDRs(args, true)
	if err != nil {
		return err
	}
	cx, cancel := timeout(60 * time.Second) // an IPAM allocation may wait for the ring
	defer cancel()
	ep, err := c.client.Attach(cx, api.AttachRequest{Target: target, CIDRs: cidrs})
	if err != nil {
		return err
	}
	printCIDRs(c, ep)
	return nil
}

func runDetach(c *ctx, args []string) error {
	cidrs, target, err := splitCIDRs(args, true)
	if err != nil {
		return err
	}
	cx, cancel := timeout(30 * time.Second)
	defer cancel()
	ep, err := c.client.Detach(cx, api.DetachRequest{Target: target, CIDRs: cidrs})
	if err != nil {
		return err
	}
	printCIDRs(c, ep)
	return nil
}

func runExpose(c *ctx, args []string) error {
	cidrs, _, err := splitCIDRs(args, false)
	if err != nil {
		return err
	}
	cx, cancel := timeout(60 * time.Second)
	defer cancel()
	ep, err := c.client.Expose(cx, cidrs)
	if err != nil {
		return err
	}
	printCIDRs(c, ep)
	return nil
}

func runHide(c *ctx, args []string) error {
	cidrs, _, err := splitCIDRs(args, false)
	if err != nil {
		return err
	}
	cx, cancel := timeout(30 * time.Second)
	defer cancel()
	ep, err := c.client.Hide(cx, cidrs)
	if err != nil {
		return err
	}
	printCIDRs(c, ep)
	return nil
}

func runPs(c *ctx, args []string) error {
	if len(args) > 0 {
		return usageError{"ps takes no arguments"}
	}
	cx, cancel := timeout(10 * time.Second)
	defer cancel()
	eps, err := c.client.Endpoints(cx)
	if err != nil {
		return err
	}
	for _, ep := range eps {
		fmt.Fprintf(c.env.Stdout, "%s %s %s\n", ep.ID, ep.MAC, strings.Join(ep.CIDRs, " "))
	}
	return nil
}
