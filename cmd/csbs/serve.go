package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"csbs/daemon"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the appliance daemon (no config: data in ./var, socket ./var/csbs.sock)",
		UsageText: `csbs serve
   csbs serve --config /etc/csbs/config.toml`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config `FILE`", EnvVars: []string{"CSBS_CONFIG"}},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			d, err := daemon.New(cfg, daemon.Options{Log: daemon.NewLogger(cfg.Log, os.Stderr), Version: version})
			if err != nil {
				return err
			}
			return d.Serve(c.Context, nil)
		},
	}
}
