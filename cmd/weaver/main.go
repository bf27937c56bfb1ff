// Command weaver is the router daemon in the foreground (for systemd, Kubernetes, or
// `weavectl launch`, which starts it detached). Exit status: 0 after a clean stop, 1 when it
// cannot start, 2 when it fails while running.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/weavemesh/weave/daemon"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	opts, err := parseFlags(args, os.Getenv)
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weaver: %v\n", err)
		return 1
	}
	if opts.printVersion {
		fmt.Println(version.String())
		return 0
	}
	log, err := logx.New(os.Stderr, opts.logLevel, opts.logFormat)
	if err != nil {
		fmt.Fprintf(os.Stderr, "weaver: %v\n", err)
		return 1
	}
	cfg := opts.cfg
	cfg.Logger = log
	cfg.Version = version.String()
	if opts.reset {
		if err := daemon.Reset(cfg); err != nil {
			fmt.Fprintf(os.Stderr, "weaver: reset: %v\n", err)
			return 1
		}
		return 0
	}

	d, err := daemon.New(cfg)
	if err != nil {
		log.Error("cannot start", logx.KeyErr, err)
		fmt.Fprintf(os.Stderr, "weaver: %v\n", err)
		return 1
	}
	if err := d.Start(); err != nil {
		log.Error("cannot start", logx.KeyErr, err)
		fmt.Fprintf(os.Stderr, "weaver: %v\n", err)
		d.Close()
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sigs:
		log.Info("signal received, stopping", logx.KeyReason, s.String())
	case <-d.Stopping():
	}
	signal.Stop(sigs)
	if err := d.Close(); err != nil {
		log.Error("unclean stop", logx.KeyErr, err)
	}
	if err := d.Err(); err != nil {
		log.Error("stopped on a fatal error", logx.KeyErr, err)
		return 2
	}
	return 0
}
