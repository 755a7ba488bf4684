package main

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/urfave/cli/v2"

	"csbs/api"
)

// pageFlags are the flags of a paged listing (--limit, --after).
func pageFlags(flags ...cli.Flag) []cli.Flag {
	return append(flags,
		&cli.IntFlag{Name: "limit", Usage: "list at most `N` items (0: all)"},
		&cli.StringFlag{Name: "after", Usage: "list from after `CURSOR`, as the previous page printed it (or an item's id)"})
}

// listPage gets one page of a listing into out. When more items follow,
// it says on stderr how to get them; stdout keeps the table or the JSON
// array alone.
func listPage(c *cli.Context, cl *api.Client, path string, q url.Values, out any) error {
	if q == nil {
		q = url.Values{}
	}
	if n := c.Int("limit"); n < 0 {
		return fmt.Errorf("--limit %d: want 0 (all) or more", n)
	} else if n > 0 {
		q.Set("limit", strconv.Itoa(n))
	}
	if a := c.String("after"); a != "" {
		q.Set("after", a)
	}
	next, err := cl.List(c.Context, path, q, out)
	if err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(c.App.ErrWriter, "more follow; the next page: csbs %s --after %s\n", c.Command.FullName(), next)
	}
	return nil
}
