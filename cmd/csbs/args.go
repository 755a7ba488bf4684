package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// interspersed moves flags that follow positional arguments in front of
// them, so that the documented forms such as `csbs backup create web1
// --full --wait` parse: urfave/cli v2, like Go's flag package, stops at
// the first positional argument. A "--" ends flag parsing as usual.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 || args[len(args)-1] == "--generate-bash-completion" {
		return args // shell completion: urfave/cli reads the line as typed
	}
	out := []string{args[0]}
	rest := args[1:]
	flags := app.Flags
	cmds := app.Commands
	// Global flags, then the command path.
	for len(rest) > 0 {
		a := rest[0]
		if strings.HasPrefix(a, "-") && a != "--" {
			n := flagArity(flags, a)
			out = append(out, rest[:min(n, len(rest))]...)
			rest = rest[min(n, len(rest)):]
			continue
		}
		cmd := findCommand(cmds, a)
		if cmd == nil {
			// Not a command: leave the line as typed, so that the
			// parser names the unknown command, not a flag after it.
			return args
		}
		out = append(out, a)
		rest = rest[1:]
		flags, cmds = cmd.Flags, cmd.Subcommands
		if len(cmds) == 0 {
			break
		}
	}
	var fl, pos, global []string
	for len(rest) > 0 {
		a := rest[0]
		if a == "--" {
			pos = append(pos, rest...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			// A global flag given after the command (csbs token create
			// --project P) goes before the command, where urfave/cli wants it.
			if !hasFlag(flags, a) && hasFlag(app.Flags, a) {
				n := min(flagArity(app.Flags, a), len(rest))
				global = append(global, rest[:n]...)
				rest = rest[n:]
				continue
			}
			n := min(flagArity(flags, a), len(rest))
			fl = append(fl, rest[:n]...)
			rest = rest[n:]
			continue
		}
		pos = append(pos, a)
		rest = rest[1:]
	}
	if len(global) > 0 {
		out = append([]string{out[0]}, append(global, out[1:]...)...)
	}
	out = append(out, fl...)
	if len(pos) > 0 && pos[0] != "--" {
		for _, p := range pos {
			if strings.HasPrefix(p, "-") {
				out = append(out, "--")
				break
			}
		}
	}
	return append(out, pos...)
}

func hasFlag(flags []cli.Flag, arg string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.Name == name {
			return c
		}
		for _, a := range c.Aliases {
			if a == name {
				return c
			}
		}
	}
	return nil
}

// flagArity is 1 for a boolean flag or --flag=value, else 2 (flag and
// its value).
func flagArity(flags []cli.Flag, arg string) int {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return 1
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				if _, isBool := f.(*cli.BoolFlag); isBool {
					return 1
				}
				return 2
			}
		}
	}
	if name == "help" || name == "h" {
		return 1
	}
	return 1 // unknown: let the parser report it
}
