package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
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
			return show(c, st, func(w io.Writer) error { return printStatus(w, st, isTerminal(w) && os.Getenv("NO_COLOR") == "") })
		},
	}
}

// printStatus renders the status screen; color marks warnings on a
// terminal only.
func printStatus(w io.Writer, st api.Status, color bool) error {
	paint := func(code, s string) string {
		if !color {
			return s
		}
		return "\x1b[" + code + "m" + s + "\x1b[0m"
	}
	role := ""
	if st.Admin {
		role = " (admin)"
	}
	fmt.Fprintf(w, "csbs %s, region %s (AZs %s), up %s\n", st.Version, st.Region, strings.Join(st.AvailabilityZones, ", "), durationH(time.Duration(st.UptimeSeconds)*time.Second))
	fmt.Fprintf(w, "project %s%s\n\n", st.Project, role)
	s := st.Store
	fmt.Fprintf(w, "store:    %d backup(s), %s logical, %s added to the store", s.Backups, bytesH(s.LogicalBytes), bytesH(s.AddedBytes))
	if s.AddedBytes > 0 {
		fmt.Fprintf(w, " (%.1fx)", float64(s.LogicalBytes)/float64(s.AddedBytes))
	}
	fmt.Fprintln(w)
	if st.Admin {
		fmt.Fprintf(w, "          disk %s, free %s (backups stop at %s), block cache hit ratio %.0f%%\n", bytesH(s.DiskBytes), bytesH(s.FreeBytes), bytesH(s.MinFreeBytes), s.CacheHitRatio*100)
		if o := s.ObjectStore; o != nil {
			fmt.Fprintf(w, "          packs in %s: %d PUTs (%s up), %d GETs (%s down), %d retries; cache %s of %s, hit ratio %.0f%%\n",
				o.Location, o.Requests["PUT"], bytesH(o.BytesUp), o.Requests["GET"], bytesH(o.BytesDown), o.Retries,
				bytesH(o.CacheBytes), bytesH(o.CacheLimit), o.CacheHitRatio*100)
		}
	}
	fmt.Fprintf(w, "jobs:     %d running, %d queued\n", st.JobsRunning, st.JobsQueued)
	for _, j := range st.ActiveJobs {
		what := orDash(j.BackupName)
		fmt.Fprintf(w, "          %s %-8s %-8s %s %s of %s (%s)\n", j.ID, j.Kind, j.State, what, bytesH(j.Done), bytesH(j.Total), pct(j.Done, j.Total))
	}
	fmt.Fprintf(w, "exports:  %d\n", len(st.Exports))
	for _, e := range st.Exports {
		fmt.Fprintf(w, "          %s %s %s/%s, %d connection(s), %s\n", e.Name, e.Kind, e.BackupName, e.Disk, e.Connections, e.URI)
	}
	fmt.Fprintf(w, "mounts:   %d\n", len(st.Mounts))
	for _, m := range st.Mounts {
		kind := "fuse"
		if m.Browse {
			kind = "browse"
		}
		fmt.Fprintf(w, "          %s (%s)\n", m.Path, kind)
	}
	if len(st.NextRuns) == 0 {
		fmt.Fprintln(w, "next run: none (no enabled policy)")
	}
	for i, r := range st.NextRuns {
		label := "          "
		if i == 0 {
			label = "next run: "
		}
		fmt.Fprintf(w, "%s%s  policy %s (%s)\n", label, timeH(r.Time), r.Policy, orDash(strings.Join(r.Servers, ", ")))
	}
	for _, m := range []struct {
		name string
		last *catalog.Job
		next *time.Time
	}{{"gc:       ", st.LastGC, st.NextGC}, {"scrub:    ", st.LastScrub, st.NextScrub}} {
		if !st.Admin {
			break
		}
		next := "by hand only"
		if m.next != nil {
			next = timeH(*m.next)
		}
		if m.last == nil {
			fmt.Fprintf(w, "%slast never; next %s\n", m.name, next)
			continue
		}
		fmt.Fprintf(w, "%slast %s %s %s; next %s\n", m.name, timeH(m.last.Ended), m.last.State, m.last.Note+m.last.Error, next)
	}
	if len(st.Warnings) == 0 {
		fmt.Fprintln(w, "\n"+paint("32", "no warnings"))
		return nil
	}
	fmt.Fprintln(w, "\n"+paint("33;1", "warnings:"))
	for _, msg := range st.Warnings {
		fmt.Fprintln(w, "  "+paint("33", "! "+msg))
	}
	return nil
}

// durationH prints a duration in days, hours and minutes.
func durationH(d time.Duration) string {
	d = d.Round(time.Second)
	days := d / (24 * time.Hour)
	d -= days * 24 * time.Hour
	switch {
	case days > 0:
		return fmt.Sprintf("%dd%dh", days, d/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, (d%time.Hour)/time.Minute)
	default:
		return d.String()
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
