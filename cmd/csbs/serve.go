package main

import (
	"context"
	"net"
	"os"

	"github.com/urfave/cli/v2"

	"csbs/daemon"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the appliance daemon (no config: data in ./var, socket ./var/csbs.sock)",
		UsageText: `csbs serve
   csbs serve --config /etc/csbs/csbs.toml`,
		Description: `SIGTERM or SIGINT stop it gracefully: no new jobs start, running backups
are abandoned uncommitted (never half visible), hydration state is kept
and resumes at the next start, exports and mounts are closed. Under
systemd (Type=notify) it reports READY=1 once the API answers.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config `FILE`", EnvVars: []string{"CSBS_CONFIG"}},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			log := daemon.NewLogger(cfg.Log, os.Stderr)
			cpus, _ := daemon.Oversubscribe()
			d, err := daemon.New(cfg, daemon.Options{Log: log, Version: version, CPUs: cpus})
			if err != nil {
				return err
			}
			ready := make(chan struct{})
			go func() {
				select {
				case <-ready:
					if err := sdNotify("READY=1"); err != nil {
						log.Warn("systemd notify", "err", err)
					}
				case <-c.Context.Done():
				}
			}()
			err = d.Serve(c.Context, ready)
			_ = sdNotify("STOPPING=1")
			return err
		},
	}
}

// sdNotify sends a state to systemd when it started us with
// NOTIFY_SOCKET (Type=notify); otherwise it does nothing.
func sdNotify(state string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	if sock[0] == '@' {
		sock = "\x00" + sock[1:] // abstract socket
	}
	var d net.Dialer
	conn, err := d.DialContext(context.Background(), "unixgram", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
