package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"csbs/api"
	"csbs/catalog"
)

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON"}

// quietFlag prints only what a script needs from a command.
func quietFlag(usage string) cli.Flag {
	return &cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: usage}
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(toAny(headers)...)
	return t
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i := range s {
		out[i] = s[i]
	}
	return out
}

func (t *table) row(cols ...any) {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = fmt.Sprint(c)
	}
	fmt.Fprintln(t.tw, strings.Join(parts, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func bytesH(n int64) string {
	if n < 0 {
		return "-"
	}
	return humanize.IBytes(uint64(n))
}

func timeH(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func pct(done, total int64) string {
	if total <= 0 {
		return "-"
	}
	return fmt.Sprintf("%d%%", done*100/total)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// absLocal makes a local path absolute, since the daemon runs in another
// directory; URIs (nbd://...) pass unchanged.
func absLocal(p string) string {
	if strings.Contains(p, "://") {
		return p
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// waitJob follows a job until it ends: a progress bar (bytes, rate, ETA)
// on a terminal, plain progress lines otherwise. It returns an error when
// the job did not succeed.
func waitJob(c *cli.Context, cl *api.Client, id string) (catalog.Job, error) {
	ctx := c.Context
	out := c.App.ErrWriter
	var bar *progressbar.ProgressBar
	lastLine := time.Time{}
	for {
		var j catalog.Job
		q := map[string][]string{"timeout": {"1"}}
		if err := cl.Do(ctx, "POST", "/v1/jobs/"+url.PathEscape(id)+"/wait", q, nil, &j); err != nil {
			switch {
			case ctx.Err() != nil:
				return j, fmt.Errorf("stopped waiting (the job goes on; follow it with csbs job wait %s): %w", id, context.Cause(ctx))
			case errors.Is(err, api.ErrNoDaemon):
				return j, fmt.Errorf("waiting for job %s: %w; once a daemon runs again, csbs job show %s says how the job ended", id, err, id)
			}
			return j, err
		}
		if j.Total > 0 && !quietMode(c) {
			if isTerminal(out) {
				if bar == nil {
					what := fmt.Sprintf("%s %s", j.Kind, j.ID)
					if j.Kind == catalog.JobHydrate {
						// Counts the disk's bytes in place, holes included:
						// csbs restore show has the rate of data copied.
						what += " (disk in place)"
					}
					bar = progressbar.NewOptions64(j.Total,
						progressbar.OptionSetWriter(out),
						progressbar.OptionSetDescription(what),
						progressbar.OptionShowBytes(true),
						progressbar.OptionShowCount(),
						progressbar.OptionShowTotalBytes(true),
						progressbar.OptionUseIECUnits(true),
						progressbar.OptionSetPredictTime(true),
						progressbar.OptionThrottle(200*time.Millisecond),
						progressbar.OptionClearOnFinish())
				}
				_ = bar.Set64(j.Done)
			} else if time.Since(lastLine) > 2*time.Second || j.Finished() {
				fmt.Fprintf(out, "%s %s: %s of %s (%s)\n", j.Kind, j.ID, bytesH(j.Done), bytesH(j.Total), pct(j.Done, j.Total))
				lastLine = time.Now()
			}
		}
		if j.Finished() {
			if bar != nil {
				_ = bar.Finish()
			}
			if j.State != catalog.JobSucceeded {
				return j, fmt.Errorf("job %s %s: %s", j.ID, j.State, j.Error)
			}
			return j, nil
		}
		if err := ctx.Err(); err != nil {
			return j, fmt.Errorf("stopped waiting (the job goes on; follow it with csbs job wait %s): %w", j.ID, context.Cause(ctx))
		}
	}
}
