// Command volback backs up live virtual-machine volumes into a
// content-addressed chunk repository and restores them.
//
// The command only binds flags to the packages that do the work:
// chunkstore (the repository), dataplane (backup and restore) and bench
// (the benchmark harness).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	if err := app.RunContext(ctx, os.Args); err != nil {
		if ec, ok := err.(cli.ExitCoder); ok {
			if msg := ec.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "volback:", msg)
			}
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "volback:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "volback",
		Usage: "back up live virtual-machine volumes into a deduplicating chunk repository",
		Flags: append(globalFlags(), repoFlag,
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of the command to this file", Hidden: true}),
		Before: func(c *cli.Context) error {
			if p := c.String("cpuprofile"); p != "" {
				f, err := os.Create(p)
				if err != nil {
					return err
				}
				return pprof.StartCPUProfile(f)
			}
			return nil
		},
		After: func(c *cli.Context) error {
			if c.String("cpuprofile") != "" {
				pprof.StopCPUProfile()
			}
			return nil
		},
		// Errors are printed once by main, with their exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		// Repeated flags are repeated, not comma-separated: a --volume
		// value holds commas (UUID=PATH,type=Root,vm=VM).
		DisableSliceFlagSeparator: true,
		Commands:                  commands(),
	}
}

func commands() []*cli.Command {
	cmds := []*cli.Command{
		repoCommand(),
		backupCommand(),
		restoreCommand(),
		lsCommand(),
		verifyCommand(),
		gcCommand(),
		mountCommand(),
		daemonCommand(),
		serveCommand(),
		demoCommand(),
		benchCommand(),
	}
	for _, c := range cmds {
		withGlobalFlags(c)
	}
	return cmds
}
