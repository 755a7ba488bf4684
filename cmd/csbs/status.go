package main

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
)

func statusCommand() *cli.Command {
	return verb[api.Status]{
		Name: "status", Usage: "show the appliance's status", JSON: true,
		Path: apiPath("/v1/status"),
		Print: func(w io.Writer, st api.Status) error {
			return printStatus(w, st, isTerminal(w) && os.Getenv("NO_COLOR") == "")
		},
	}.command()
}

// statusNoteWidth bounds the part of a gc or scrub job's note that status
// shows (csbs job show has all of it).
const statusNoteWidth = 60

// printStatus renders the status screen; color marks warnings on a
// terminal only. Every line stays short: details are one command away.
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
	fmt.Fprintf(w, "csbs %s, region %s (%s %s), up %s\n", st.Version, st.Region, plural(len(st.AvailabilityZones), "AZ", "AZs"), strings.Join(st.AvailabilityZones, ", "), durationH(time.Duration(st.UptimeSeconds)*time.Second))
	fmt.Fprintf(w, "project %s%s\n\n", st.Project, role)
	s := st.Store
	if st.Admin {
		fmt.Fprintf(w, "store:    %s, %s of disks in %s on disk (allocated)%s\n", count(s.Backups, "backup"), bytesH(s.LogicalBytes), bytesH(s.DiskBytes), ratio(s.LogicalBytes, s.DiskBytes))
		fmt.Fprintf(w, "          %s free (backups stop below %s)\n", bytesH(s.FreeBytes), bytesH(s.MinFreeBytes))
		auto := ""
		if s.CacheAuto {
			auto = " (auto)"
		}
		fmt.Fprintf(w, "reads:    %d workers; block cache %s of %s%s, %.0f%% hits\n",
			s.Workers, bytesH(s.CacheBytes), bytesH(s.CacheLimitBytes), auto, s.CacheHitRatio*100)
		fmt.Fprintf(w, "          in flight %s of %s (peak %s); attach cache files %s\n",
			bytesH(s.InflightBytes), bytesH(s.InflightLimitBytes), bytesH(s.InflightPeakBytes), bytesH(s.ReadCacheBytes))
		if o := s.ObjectStore; o != nil {
			fmt.Fprintf(w, "          packs in %s\n", o.Location)
			fmt.Fprintf(w, "          %d PUTs (%s up), %d GETs (%s down), %d retries; cache %s of %s, %.0f%% hits\n",
				o.Requests["PUT"], bytesH(o.BytesUp), o.Requests["GET"], bytesH(o.BytesDown), o.Retries,
				bytesH(o.CacheBytes), bytesH(o.CacheLimit), o.CacheHitRatio*100)
		}
	} else {
		fmt.Fprintf(w, "store:    %s, %s of disks; they added %s to the store\n", count(s.Backups, "backup"), bytesH(s.LogicalBytes), bytesH(s.AddedBytes))
	}
	if st.JobsRunning+st.JobsQueued == 0 {
		fmt.Fprintln(w, "jobs:     none running or queued")
	} else {
		fmt.Fprintf(w, "jobs:     %d running, %d queued\n", st.JobsRunning, st.JobsQueued)
	}
	for _, j := range st.ActiveJobs {
		what := j.BackupName
		if what == "" {
			what = j.RestoreID
		}
		fmt.Fprintf(w, "          %s %-8s %-8s %s %s of %s (%s)\n", j.ID, j.Kind, j.State, orDash(what), bytesH(j.Done), bytesH(j.Total), pct(j.Done, j.Total))
	}
	fmt.Fprintf(w, "exports:  %s\n", countOrNone(len(st.Exports)))
	for _, e := range st.Exports {
		fmt.Fprintf(w, "          %s %s %s/%s, %s, %s\n", e.Name, e.Kind, e.BackupName, e.Disk, count(e.Connections, "connection"), e.URI)
	}
	fmt.Fprintf(w, "mounts:   %s\n", countOrNone(len(st.Mounts)))
	for _, m := range st.Mounts {
		fmt.Fprintf(w, "          %s (%s)\n", m.Path, mountKind(m))
	}
	if len(st.NextRuns) == 0 {
		fmt.Fprintln(w, "next run: none (no enabled policy)")
	}
	for i, r := range st.NextRuns {
		label := "          "
		if i == 0 {
			label = "next run: "
		}
		fmt.Fprintf(w, "%s%s  policy %s (%s)\n", label, zoned(r.Time, r.Timezone), r.Policy, orDash(strings.Join(r.Servers, ", ")))
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
			next = localZoned(*m.next)
		}
		if m.last == nil {
			fmt.Fprintf(w, "%slast never; next %s\n", m.name, next)
			continue
		}
		fmt.Fprintf(w, "%slast %s %s, %s; next %s\n", m.name, localZoned(m.last.Ended), m.last.State, maintenanceResult(*m.last), next)
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

// maintenanceResult is the gist of a gc or scrub job's note for status:
// what gc freed, whether scrub found damage (csbs job show has the rest).
func maintenanceResult(j catalog.Job) string {
	if j.Error != "" {
		return shortNote(j.Error, statusNoteWidth)
	}
	if m := gcFreed.FindStringSubmatch(j.Note); m != nil {
		return "freed " + m[1]
	}
	for _, part := range strings.Split(j.Note, "; ") {
		if strings.Contains(part, "damage") {
			return part
		}
	}
	return shortNote(j.Note, statusNoteWidth)
}

// gcFreed finds the bytes in a gc note ("freed 12 blocks (768 KiB); ...").
var gcFreed = regexp.MustCompile(`^freed \d+ blocks \(([^)]*)\)`)

// ratio says how many times smaller the second figure is, when it is.
func ratio(logical, disk int64) string {
	if disk <= 0 || logical <= disk {
		return ""
	}
	return fmt.Sprintf(", %.0fx less", float64(logical)/float64(disk))
}

// shortNote keeps the leading "; "-separated clauses of a job note that
// fit in width (at least the first, cut with "…").
func shortNote(note string, width int) string {
	var out string
	for i, part := range strings.Split(note, "; ") {
		next := part
		if i > 0 {
			next = out + "; " + part
		}
		if len([]rune(next)) > width {
			if i == 0 {
				return string([]rune(part)[:width-1]) + "…"
			}
			return out + "; …"
		}
		out = next
	}
	return out
}

// localZoned prints t in the local time zone, with the zone.
func localZoned(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04 MST")
}

// count says "1 backup", "2 backups".
func count(n int, noun string) string {
	return fmt.Sprintf("%d %s", n, plural(n, noun, noun+"s"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func countOrNone(n int) string {
	if n == 0 {
		return "none"
	}
	return fmt.Sprint(n)
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
