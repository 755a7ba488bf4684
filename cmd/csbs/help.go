package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// Help and usage errors. urfave/cli's defaults print a mistyped flag's
// error twice around the whole help, name "--ful" "-ful", show examples in
// place of a command's synopsis and answer a mistyped command with "No
// help topic". Here every usage error is one line that names what was
// wrong, suggests the closest name and points to --help; --help shows the
// synopsis (COMMAND, SERVER, ...), then examples, then options.

const appHelp = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{.HelpName}} [global options] COMMAND [options] [arguments]

COMMANDS:{{template "visibleCommandCategoryTemplate" .}}

GLOBAL OPTIONS:{{template "visibleFlagTemplate" .}}

Run {{.HelpName}} COMMAND --help for a command's options and examples.
`

const parentHelp = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{.HelpName}} COMMAND [options] [arguments]

COMMANDS:{{template "visibleCommandCategoryTemplate" .}}

Run {{.HelpName}} COMMAND --help for a command's options and examples.
`

const leafHelp = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{.HelpName}}{{if .VisibleFlags}} [options]{{end}}{{if .ArgsUsage}} {{.ArgsUsage}}{{end}}{{if .Description}}

DESCRIPTION:
   {{template "descriptionTemplate" .}}{{end}}{{if .UsageText}}

EXAMPLES:
   {{wrap .UsageText 3}}{{end}}{{if .VisibleFlags}}

OPTIONS:{{template "visibleFlagTemplate" .}}{{end}}
`

// setHelp installs the help templates, the one-line usage errors and the
// answer to an unknown command on the app and every command.
func setHelp(app *cli.App) {
	app.CustomAppHelpTemplate = appHelp
	app.OnUsageError = usageError
	app.Action = unknownCommand(func() []*cli.Command { return app.Commands })
	app.Commands = append(app.Commands, helpCommand(app.Name, nil, app.Commands))
	// urfave/cli adds --help only along with its own help command.
	app.Flags = append(app.Flags, cli.HelpFlag)
	var walk func(path []string, cmds []*cli.Command)
	walk = func(path []string, cmds []*cli.Command) {
		for _, c := range cmds {
			if c.Name == "help" {
				continue
			}
			c.OnUsageError = usageError
			// The template indents every line of the examples.
			c.UsageText = strings.ReplaceAll(c.UsageText, "\n   ", "\n")
			if len(c.Subcommands) == 0 {
				c.CustomHelpTemplate = leafHelp
				continue
			}
			c.CustomHelpTemplate = parentHelp
			subs := c.Subcommands
			c.Action = unknownCommand(func() []*cli.Command { return subs })
			sub := append(slices.Clone(path), c.Name)
			c.Subcommands = append(c.Subcommands, helpCommand(app.Name, sub, subs))
			walk(sub, subs)
		}
	}
	walk(nil, app.Commands)
}

// helpCommand is "help [COMMAND ...]" of the app (path empty) or of the
// command at path, in place of urfave/cli's, which answers a mistyped
// command with "No help topic": the words name a command below path,
// whose --help it shows; a word that names none is the one-line error of
// a mistyped command.
func helpCommand(app string, path []string, cmds []*cli.Command) *cli.Command {
	helpName := strings.Join(append([]string{app}, path...), " ")
	return &cli.Command{
		Name:      "help",
		Aliases:   []string{"h"},
		Usage:     "show the commands, or one command's options and examples",
		ArgsUsage: "[COMMAND ...]",
		UsageText: helpName + " help\n" + helpName + " help COMMAND",
		Action: func(c *cli.Context) error {
			level := cmds
			words := c.Args().Slice()
			for i, w := range words {
				found := findCommand(level, w)
				if found == nil || found.Hidden || found.Name == "help" {
					return unknownCommandError(strings.Join(append([]string{helpName}, words[:i]...), " "), w, level)
				}
				level = found.Subcommands
			}
			if len(path)+len(words) == 0 {
				return cli.ShowAppHelp(c)
			}
			args := append(append(append([]string{app}, path...), words...), "--help")
			return c.App.RunContext(c.Context, args)
		},
	}
}

// unknownCommand is the action of the app and of every command that only
// groups others: with no argument it shows the help, else it names the
// unknown command and the closest one.
func unknownCommand(cmds func() []*cli.Command) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() == 0 {
			return cli.ShowSubcommandHelp(c)
		}
		return unknownCommandError(c.Command.HelpName, c.Args().First(), cmds())
	}
}

// unknownCommandError is the one-line usage error for name, which is not
// a command of where (a help name such as "csbs backup"): the closest of
// cmds' visible names, and where the list is.
func unknownCommandError(where, name string, cmds []*cli.Command) error {
	var names []string
	for _, cmd := range cmds {
		if !cmd.Hidden {
			names = append(names, cmd.Names()...)
		}
	}
	msg := fmt.Sprintf("%sunknown command %q", subject(where), name)
	if s := closest(name, names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return cli.Exit(msg+fmt.Sprintf(" (%s --help lists the commands)", where), 2)
}

// usageError turns a flag parsing error into one line: the command, what
// was wrong with which flag (spelled with two dashes, as the help does),
// the closest flag, and where the help is.
func usageError(c *cli.Context, err error, _ bool) error {
	where := c.App.Name
	var flags []cli.Flag
	if c.Command != nil {
		where, flags = c.Command.HelpName, c.Command.Flags
	}
	if where == "" {
		where, flags = c.App.Name, c.App.Flags
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "flag provided but not defined: "):
		name := strings.TrimLeft(strings.TrimPrefix(msg, "flag provided but not defined: "), "-")
		msg = "unknown flag " + dashed(name)
		var names []string
		for _, f := range flags {
			names = append(names, f.Names()...)
		}
		if s := closest(name, names); s != "" {
			msg += fmt.Sprintf("; did you mean %s?", dashed(s))
		}
	case strings.HasPrefix(msg, "flag needs an argument: "):
		msg = dashed(strings.TrimLeft(strings.TrimPrefix(msg, "flag needs an argument: "), "-")) + " needs a value"
	case strings.HasPrefix(msg, "invalid value "):
		// invalid value "x" for flag -every-days: parse error
		if v, f, ok := strings.Cut(strings.TrimPrefix(msg, "invalid value "), " for flag "); ok {
			f, why, _ := strings.Cut(f, ": ")
			msg = fmt.Sprintf("%s %s: %s", dashed(strings.TrimLeft(f, "-")), v, why)
			if why == "parse error" {
				msg = fmt.Sprintf("%s %s: not a valid value for this flag", dashed(strings.TrimLeft(f, "-")), v)
			}
		}
	}
	return cli.Exit(fmt.Sprintf("%s%s (see %s --help)", subject(where), msg, where), 2)
}

// subject starts an error about a command: "backup create: ". main puts
// "csbs: " before every error, so the program's name is not repeated.
func subject(helpName string) string {
	name := strings.TrimSpace(strings.TrimPrefix(helpName, "csbs"))
	if name == "" {
		return ""
	}
	return name + ": "
}

// dashed spells a flag name as the help does: -q, --full.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// closest is the candidate nearest to name when it is close enough to be
// a typo (an edit distance of at most a third of its length, at least 1,
// or a prefix), else "".
func closest(name string, candidates []string) string {
	best, bestD := "", 0
	for _, c := range candidates {
		if c == "help" || c == "h" {
			continue
		}
		d := editDistance(name, c)
		if strings.HasPrefix(c, name) && len(name) >= 2 {
			d = min(d, 1)
		}
		if best == "" || d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" || bestD > max(1, len(name)/3) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (adjacent swaps
// count once, as in a typo).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
