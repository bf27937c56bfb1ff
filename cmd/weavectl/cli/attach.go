package cli

import (
	"context"
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

// endpointVerb runs attach, detach, expose or hide: [CIDR...] and (needTarget) TARGET from
// the arguments, one call within d, and the endpoint's CIDRs printed one per line.
func endpointVerb(c *ctx, args []string, needTarget bool, d time.Duration,
	call func(cx context.Context, cidrs []string, target string) (api.Endpoint, error)) error {
	cidrs, target, err := splitCIDRs(args, needTarget)
	if err != nil {
		return err
	}
	cx, cancel := timeout(d)
	defer cancel()
	ep, err := call(cx, cidrs, target)
	if err != nil {
		return err
	}
	printCIDRs(c, ep)
	return nil
}

func runAttach(c *ctx, args []string) error {
	// 60 s: an IPAM allocation may wait for the ring.
	return endpointVerb(c, args, true, 60*time.Second, func(cx context.Context, cidrs []string, target string) (api.Endpoint, error) {
		return c.client.Attach(cx, api.AttachRequest{Target: target, CIDRs: cidrs})
	})
}

func runDetach(c *ctx, args []string) error {
	return endpointVerb(c, args, true, 30*time.Second, func(cx context.Context, cidrs []string, target string) (api.Endpoint, error) {
		return c.client.Detach(cx, api.DetachRequest{Target: target, CIDRs: cidrs})
	})
}

func runExpose(c *ctx, args []string) error {
	return endpointVerb(c, args, false, 60*time.Second, func(cx context.Context, cidrs []string, _ string) (api.Endpoint, error) {
		return c.client.Expose(cx, cidrs)
	})
}

func runHide(c *ctx, args []string) error {
	return endpointVerb(c, args, false, 30*time.Second, func(cx context.Context, cidrs []string, _ string) (api.Endpoint, error) {
		return c.client.Hide(cx, cidrs)
	})
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
