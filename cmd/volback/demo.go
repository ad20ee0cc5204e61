package main

import (
	"fmt"
	"os"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/bench"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "generate an image, back it up twice, restore it, compare and verify",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: "volback-demo", Usage: "working directory"},
			&cli.StringFlag{Name: "size", Value: "1GiB", Usage: "size of the generated image"},
		},
		Action: func(c *cli.Context) error {
			size, err := humanize.ParseBytes(c.String("size"))
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			return bench.RunDemo(c.Context, bench.DemoConfig{Dir: c.String("dir"), Size: int64(size)}, os.Stdout)
		},
	}
}
