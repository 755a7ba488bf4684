package main

import (
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/urfave/cli/v2"

	"csbs/api"
)

// The command kit: a command file says which API call a verb makes and how
// its answer reads to a person; verb and listing do the rest, the same way
// for every noun:
//
//   - positional arguments are counted (a wrong count is a one-line usage
//     error) and path-escaped into the API path;
//   - --json prints the API's answer as it is (an array for a listing, an
//     object otherwise);
//   - --quiet prints only what a script needs (the new object's id, a URI,
//     a secret), or nothing;
//   - otherwise a command that changed something prints one line saying
//     what it did, then the answer for a person; a listing with nothing in
//     it says so and how to make one.
//
// Adding a noun is a file with a function returning its *cli.Command built
// from verbs and listings.

// verb is a command that makes one API call and prints its answer.
type verb[T any] struct {
	Name, Usage string
	// Examples are shown in --help (see examples.go for the short ones).
	Examples string
	// Args names the positional arguments ("BACKUP", "POLICY SERVER");
	// another number of them is a usage error. Arg(c, i) reads them.
	Args  string
	Flags []cli.Flag
	// Required names flags that must be given (checked before anything is
	// sent, with a one-line error instead of the whole help).
	Required []string
	// JSON adds --json (print the answer as JSON).
	JSON   bool
	Method string // GET unless set
	// Path is the API path; Query and Body, when set, the rest of the
	// request. Body may refuse bad flags before anything is sent.
	Path  func(c *cli.Context) string
	Query func(c *cli.Context) url.Values
	Body  func(c *cli.Context) (any, error)
	// Before runs before the call (to wait for a state the call needs).
	Before func(c *cli.Context, cl *api.Client) error
	// Then runs after the call (to follow a job with --wait); its answer
	// replaces the call's.
	Then func(c *cli.Context, cl *api.Client, v T) (T, error)
	// Done is the line saying what the command did (none for reads).
	Done func(c *cli.Context, v T) string
	// Print writes the answer for a person after Done's line.
	Print func(w io.Writer, v T) error
	// Quiet is what --quiet prints (nothing when nil).
	Quiet func(v T) string
	// paged: a listing that pages (--limit, --after; see listPage).
	paged bool
}

// command builds the *cli.Command.
func (v verb[T]) command() *cli.Command {
	flags := v.Flags
	if v.JSON {
		flags = append(flags, jsonFlag)
	}
	method := v.Method
	if method == "" {
		method = "GET"
	}
	return &cli.Command{
		Name: v.Name, Usage: v.Usage, UsageText: v.Examples, ArgsUsage: v.Args, Flags: flags,
		Action: func(c *cli.Context) error {
			if err := needArgs(c, len(strings.Fields(v.Args)), v.Args); err != nil {
				return err
			}
			if err := needFlags(c, v.Required...); err != nil {
				return err
			}
			var body any
			if v.Body != nil {
				var err error
				if body, err = v.Body(c); err != nil {
					return err
				}
			}
			var q url.Values
			if v.Query != nil {
				q = v.Query(c)
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			if v.Before != nil {
				if err := v.Before(c, cl); err != nil {
					return err
				}
			}
			var out T
			if v.paged {
				err = listPage(c, cl, v.Path(c), q, &out)
			} else {
				out, err = call[T](c, cl, method, v.Path(c), q, body)
			}
			if err != nil {
				return err
			}
			if v.Then != nil {
				if out, err = v.Then(c, cl, out); err != nil {
					return err
				}
			}
			done := ""
			if v.Done != nil {
				done = v.Done(c, out)
			}
			return emit(c, out, done, v.Quiet, v.Print)
		},
	}
}

// emit prints a command's answer: JSON with --json, what Quiet says with
// --quiet, else the done line followed by print's rendering.
func emit[T any](c *cli.Context, v T, done string, quiet func(T) string, print func(io.Writer, T) error) error {
	w := c.App.Writer
	switch {
	case quietMode(c):
		if quiet != nil {
			if s := quiet(v); s != "" {
				_, err := fmt.Fprintln(w, s)
				return err
			}
		}
		return nil
	case c.Bool("json"):
		return printJSON(w, v)
	}
	if done != "" {
		if _, err := fmt.Fprintln(w, done); err != nil {
			return err
		}
	}
	if print != nil {
		return print(w, v)
	}
	return nil
}

// quietMode is --quiet, given to the command (some have their own, which
// says what they print) or before it.
func quietMode(c *cli.Context) bool {
	for _, x := range c.Lineage() {
		if x.IsSet("quiet") {
			return true
		}
	}
	return false
}

// call makes one API request and decodes the answer into a T.
func call[T any](c *cli.Context, cl *api.Client, method, path string, q url.Values, body any) (T, error) {
	var out T
	err := cl.Do(c.Context, method, path, q, body, &out)
	return out, err
}

// listing is an `ls`-style command: one call whose answer is a list,
// printed as a table (a JSON array with --json).
type listing[T any] struct {
	Name, Usage, Examples string // Name: "ls" unless set
	Flags                 []cli.Flag
	Method                string // GET unless set
	Args                  string
	Path                  func(c *cli.Context) string
	Query                 func(c *cli.Context) url.Values
	// Columns are the table's headers and Row one item's cells.
	Columns []string
	Row     func(T) []any
	// Empty is printed instead of a table with no rows: say that there is
	// nothing and how to make something.
	Empty string
	// Paged adds --limit and --after (the API pages the listing).
	Paged bool
}

func (l listing[T]) command() *cli.Command {
	name := l.Name
	if name == "" {
		name = "ls"
	}
	flags := l.Flags
	if l.Paged {
		flags = pageFlags(flags...)
	}
	return verb[[]T]{
		Name: name, Usage: l.Usage, Examples: l.Examples, Args: l.Args, Flags: flags, JSON: true,
		Method: l.Method, Path: l.Path, Query: l.Query,
		Print: tableOf(l.Columns, l.Row, l.Empty), paged: l.Paged,
	}.command()
}

// tableOf renders a list as a table, or the empty line when there is
// nothing to list.
func tableOf[T any](columns []string, row func(T) []any, empty string) func(io.Writer, []T) error {
	return func(w io.Writer, items []T) error {
		if len(items) == 0 && empty != "" {
			_, err := fmt.Fprintln(w, empty)
			return err
		}
		t := newTable(w, columns...)
		for _, it := range items {
			t.row(row(it)...)
		}
		return t.flush()
	}
}

// apiPath joins an API path from literal parts and positional arguments:
// apiPath("/v1/backups/", 0, "/attach") puts the first argument, escaped,
// between the two.
func apiPath(parts ...any) func(c *cli.Context) string {
	return func(c *cli.Context) string {
		var b strings.Builder
		for _, p := range parts {
			switch p := p.(type) {
			case int:
				b.WriteString(url.PathEscape(c.Args().Get(p)))
			default:
				fmt.Fprint(&b, p)
			}
		}
		return b.String()
	}
}

// queryOf sends the named string flags that were given as query
// parameters of the same names.
func queryOf(names ...string) func(c *cli.Context) url.Values {
	return func(c *cli.Context) url.Values {
		q := url.Values{}
		for _, n := range names {
			if v := c.String(n); v != "" {
				q.Set(n, v)
			}
		}
		return q
	}
}

// arg is positional argument i as the user typed it (for messages).
func arg(c *cli.Context, i int) string { return c.Args().Get(i) }

// needArgs checks the number of positional arguments.
func needArgs(c *cli.Context, n int, names string) error {
	if c.NArg() != n {
		usage := strings.TrimSpace(c.Command.HelpName + " " + names)
		if c.NArg() > n {
			return cli.Exit(fmt.Sprintf("%sunexpected argument %q (usage: %s; see %s --help)", subject(c.Command.HelpName), c.Args().Get(n), usage, c.Command.HelpName), 2)
		}
		return cli.Exit(fmt.Sprintf("usage: %s (see %s --help)", usage, c.Command.HelpName), 2)
	}
	return nil
}

// needFlags checks flags that must be given. urfave/cli's own check
// prints the whole help before the error; this says it in one line.
func needFlags(c *cli.Context, names ...string) error {
	var missing []string
	for _, n := range names {
		if !c.IsSet(n) {
			missing = append(missing, "--"+n)
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return cli.Exit(fmt.Sprintf("%s%s is required (see %s --help)", subject(c.Command.HelpName), missing[0], c.Command.HelpName), 2)
	}
	return cli.Exit(fmt.Sprintf("%s%s are required (see %s --help)", subject(c.Command.HelpName), strings.Join(missing, " and "), c.Command.HelpName), 2)
}
