package main

import (
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"csbs/api"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name: "status", Usage: "show the appliance's status", Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			var st api.Status
			if err := cl.Do(c.Context, "GET", "/v1/status", nil, nil, &st); err != nil {
				return err
			}
			return show(c, st, func(w io.Writer) error {
				fmt.Fprintf(w, "csbs %s, region %s (AZs %v), up %s\n", st.Version, st.Region, st.AvailabilityZones, (time.Duration(st.UptimeSeconds) * time.Second).String())
				fmt.Fprintf(w, "project: %s (admin: %v)\njobs: %d running, %d queued\n", st.Project, st.Admin, st.JobsRunning, st.JobsQueued)
				return nil
			})
		},
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name: "version", Usage: "print the version",
		Action: func(c *cli.Context) error {
			_, err := fmt.Fprintf(c.App.Writer, "csbs %s\n", version)
			return err
		},
	}
}
