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
	return output{json: c.Bool("json"), quiet: c.Bool("quiet")}
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
