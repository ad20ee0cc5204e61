package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/dataplane"
)

// Exit codes beyond 0 (success) and 1 (any error).
const exitVerifyFailed = 3

type output struct {
	json  bool
	quiet bool
}

func outputOf(c *cli.Context) output {
	return output{json: boolFlag(c, "json"), quiet: boolFlag(c, "quiet")}
}

// globalFlags are accepted before the command and after it, as restic's
// and kopia's are: `volback --json backup ...` and `volback backup
// --json ...` mean the same. stringFlag and boolFlag read them.
func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON on stdout"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only results, no progress or summaries"},
		&cli.StringFlag{Name: "password-file", Usage: "read an encrypted repository's passphrase from FILE (else VOLBACK_PASSWORD, else a terminal prompt)", EnvVars: []string{"VOLBACK_PASSWORD_FILE"}},
	}
}

// withGlobalFlags adds the global flags to a command and its subcommands.
func withGlobalFlags(cmd *cli.Command) *cli.Command {
	have := map[string]bool{}
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			have[n] = true
		}
	}
	for _, f := range globalFlags() {
		if !have[f.Names()[0]] {
			cmd.Flags = append(cmd.Flags, f)
		}
	}
	for _, sub := range cmd.Subcommands {
		withGlobalFlags(sub)
	}
	return cmd
}

// setIn finds the nearest context, the command's first, where name was set
// (on the command line or through its environment variable).
func setIn(c *cli.Context, name string) *cli.Context {
	for _, cc := range c.Lineage() {
		if cc.IsSet(name) {
			return cc
		}
	}
	return nil
}

// stringFlag is a flag given after or before the command; "" if neither.
func stringFlag(c *cli.Context, name string) string {
	if cc := setIn(c, name); cc != nil {
		return cc.String(name)
	}
	return ""
}

// boolFlag is a flag given after or before the command.
func boolFlag(c *cli.Context, name string) bool {
	if cc := setIn(c, name); cc != nil {
		return cc.Bool(name)
	}
	return false
}

// infof prints a human summary line on stderr unless quiet or JSON.
func (o output) infof(format string, args ...any) {
	if !o.quiet && !o.json {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

func (o output) printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// watch draws a progress bar for p on a terminal until the returned stop
// function is called. Off a terminal, in quiet or JSON mode, it draws
// nothing.
func (o output) watch(p *dataplane.Progress, what string) (stop func()) {
	if o.quiet || o.json || !isatty.IsTerminal(os.Stderr.Fd()) {
		return func() {}
	}
	newBar := func(total int64) *progressbar.ProgressBar {
		return progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionUseIECUnits(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetPredictTime(true),
		)
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		var bar *progressbar.ProgressBar
		for {
			// The bar starts once the operation knows its total, so
			// its rate is measured from the start of the real work.
			if bar == nil && p.Total() > 0 {
				bar = newBar(p.Total())
			}
			if bar != nil {
				_ = bar.Set64(p.Done())
			}
			select {
			case <-done:
				if bar != nil {
					_ = bar.Finish()
					fmt.Fprintln(os.Stderr)
				}
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

func rate(bytes int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB/s", float64(bytes)/d.Seconds()/(1<<20))
}
