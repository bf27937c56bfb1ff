package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
)

// Env is what a command may touch of the outside world, so tests can run commands in-process.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Executable is weavectl's own path (launch finds weaver beside it).
	Executable func() (string, error)
}

// OSEnv is the real environment.
func OSEnv() Env {
	return Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Executable: os.Executable}
}

// usageError is reported with the usage line and exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// ctx is one command's context: settings shared by every subcommand.
type ctx struct {
	env      Env
	socket   string
	stateDir string
	client   *client.Client
}

type command struct {
	name, args, help string
	run              func(c *ctx, args []string) error
}

func commands() []command {
	return []command{
		{"launch", "[flags] [PEER...]", "start the router detached and wait until it is ready", runLaunch},
		{"stop", "", "stop the router, keeping bridge, containers and state", runStop},
		{"reset", "", "stop the router and remove its bridge, devices and state", runReset},
		{"status", "[peers|connections|targets|ipam] [--json]", "show the router's status", runStatus},
		{"report", "", "print the whole state as JSON", runReport},
		{"connect", "[--replace] PEER...", "add connection targets", runConnect},
		{"forget", "PEER...", "remove connection targets", runForget},
		{"attach", "[CIDR...] TARGET", "connect a network namespace (name, path or PID) to the network", runAttach},
		{"detach", "[CIDR...] TARGET", "remove addresses, or the whole interface, from a namespace", runDetach},
		{"expose", "[CIDR...]", "give the host an address on the network", runExpose},
		{"hide", "[CIDR...]", "remove the host's addresses from the network", runHide},
		{"ps", "", "list attached endpoints: ID MAC CIDR...", runPs},
		{"rmpeer", "NAME", "take over the IP space of a dead peer (name or nickname)", runRmpeer},
		{"version", "", "print the version of weavectl and of the running router", runVersion},
	}
}

// Run runs weavectl with args and returns the exit status: 0 on success, 1 when the command
// failed, 2 for a usage error.
func Run(args []string, env Env) int {
	c := &ctx{env: env, socket: env.Getenv("WEAVE_SOCKET"), stateDir: env.Getenv("WEAVE_STATE_DIR")}
	if c.socket == "" {
		c.socket = api.DefaultSocket
	}
	if c.stateDir == "" {
		c.stateDir = api.DefaultStateDir
	}
	// Global settings may come before the command or anywhere after it.
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || (name != "socket" && name != "state-dir") {
			rest = append(rest, a)
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				fmt.Fprintf(env.Stderr, "weavectl: --%s needs a value\n", name)
				return 2
			}
			i++
			val = args[i]
		}
		if name == "socket" {
			c.socket = val
		} else {
			c.stateDir = val
		}
	}
	if len(rest) == 0 || rest[0] == "help" || rest[0] == "--help" || rest[0] == "-h" {
		usage(env.Stdout)
		if len(rest) == 0 {
			return 2
		}
		return 0
	}
	c.client = client.New(c.socket)
	defer c.client.Close()
	for _, cmd := range commands() {
		if cmd.name != rest[0] {
			continue
		}
		// Help is answered before the command runs: `launch --help` must not start weaver,
		// and no verb may touch the daemon, the state dir or the host to print its usage.
		if wantsHelp(rest[1:]) {
			commandUsage(env.Stdout, cmd)
			return 0
		}
		err := cmd.run(c, rest[1:])
		if err == nil {
			return 0
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(env.Stderr, "weavectl %s: %v\nusage: weavectl %s %s\n", cmd.name, err, cmd.name, cmd.args)
			return 2
		}
		fmt.Fprintf(env.Stderr, "weavectl %s: %v\n", cmd.name, oneLine(err))
		return 1
	}
	fmt.Fprintf(env.Stderr, "weavectl: unknown command %q (try `weavectl help`)\n", rest[0])
	return 2
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: weavectl [--socket PATH] [--state-dir DIR] COMMAND [ARGS]")
	fmt.Fprintln(w, "\ncommands:")
	cmds := commands()
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-8s %-40s %s\n", c.name, c.args, c.help)
	}
	fmt.Fprintln(w, "\nenvironment: WEAVE_SOCKET, WEAVE_STATE_DIR, WEAVE_PASSWORD")
}

// wantsHelp reports whether args ask for help. No verb takes a positional argument that
// starts with "-", so these can never be a PEER, CIDR or TARGET.
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

func commandUsage(w io.Writer, cmd command) {
	fmt.Fprintf(w, "usage: weavectl [--socket PATH] [--state-dir DIR] %s %s\n\n%s\n", cmd.name, cmd.args, cmd.help)
	if cmd.name == "launch" {
		fmt.Fprintf(w, "\n%s\n", launchDetail)
	}
}

func timeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// splitFlags separates the boolean flags a command knows from its positional arguments.
func splitFlags(args []string, known ...string) (set map[string]bool, pos []string, err error) {
	set = make(map[string]bool)
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		if !slices.Contains(known, name) {
			return nil, nil, usageError{fmt.Sprintf("unknown flag %s", a)}
		}
		set[name] = true
	}
	return set, pos, nil
}
