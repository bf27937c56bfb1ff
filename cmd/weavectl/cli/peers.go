package cli

import (
	"fmt"
	"time"

	"github.com/weavemesh/weave/internal/version"
)

func runConnect(c *ctx, args []string) error {
	flags, peers, err := splitFlags(args, "replace")
	if err != nil {
		return err
	}
	if len(peers) == 0 && !flags["replace"] {
		return usageError{"no peers given"}
	}
	cx, cancel := timeout(10 * time.Second)
	defer cancel()
	return c.client.Connect(cx, peers, flags["replace"])
}

func runForget(c *ctx, args []string) error {
	if len(args) == 0 {
		return usageError{"no peers given"}
	}
	cx, cancel := timeout(10 * time.Second)
	defer cancel()
	return c.client.Forget(cx, args)
}

func runVersion(c *ctx, args []string) error {
	if len(args) > 0 {
		return usageError{"version takes no arguments"}
	}
	fmt.Fprintf(c.env.Stdout, "weavectl %s\n", version.String())
	cx, cancel := timeout(2 * time.Second)
	defer cancel()
	v, err := c.client.Version(cx)
	if err != nil {
		fmt.Fprintf(c.env.Stdout, "weaver   not running\n")
		return nil
	}
	fmt.Fprintf(c.env.Stdout, "weaver   %s (API %s)\n", v.Version, v.API)
	return nil
}

func runRmpeer(c *ctx, args []string) error {
	if len(args) != 1 {
		return usageError{"rmpeer takes one peer name or nickname"}
	}
	cx, cancel := timeout(30 * time.Second)
	defer cancel()
	r, err := c.client.Rmpeer(cx, args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(c.env.Stdout, "%d IPs taken over from %s\n", r.Taken, r.Peer)
	return nil
}
