package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// The scripts ask csbs itself for candidates (urfave/cli's
// --generate-bash-completion), so they never go stale.
const bashCompletion = `# bash completion for csbs: source it, or install it as
# /usr/share/bash-completion/completions/csbs
_csbs() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    local -a line=("${COMP_WORDS[@]:0:COMP_CWORD}")
    if [[ $cur == -* ]]; then
        line+=("$cur")
    fi
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$("${line[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o bashdefault -o default -F _csbs csbs
`

const zshCompletion = `#compdef csbs
# zsh completion for csbs: put it in a directory of $fpath as _csbs
_csbs() {
    local -a line candidates
    line=("${words[@]:0:$((CURRENT-1))}")
    if [[ ${words[CURRENT]} == -* ]]; then
        line+=("${words[CURRENT]}")
    fi
    candidates=("${(@f)$("${line[@]}" --generate-bash-completion 2>/dev/null)}")
    if (( ${#candidates} )); then
        compadd -a candidates
    else
        _files
    fi
}
compdef _csbs csbs
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash or zsh)",
		ArgsUsage: "bash|zsh",
		UsageText: `source <(csbs completion bash)
   csbs completion zsh > "${fpath[1]}/_csbs"`,
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := fmt.Fprint(c.App.Writer, zshCompletion)
				return err
			}
			return fmt.Errorf("csbs completion %q: want bash or zsh", c.Args().First())
		},
	}
}
