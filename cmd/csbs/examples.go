package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// examples returns the --help examples of commands that do not set their
// own UsageText, by command path.
func examples() map[string]string {
	return map[string]string{
		"project create":      "csbs project create team-a",
		"project ls":          "csbs project ls --json",
		"project rm":          "csbs project rm team-a",
		"token create":        "csbs token create --project team-a --name ci\n   export CSBS_TOKEN=$(csbs token create --project team-a --name ci --quiet)",
		"token ls":            "csbs token ls --project team-a",
		"token revoke":        "csbs token revoke tok-1a2b3c4d5e6f",
		"server ls":           "csbs server ls",
		"server show":         "csbs server show web1",
		"server rm":           "csbs server rm web1",
		"policy ls":           "csbs policy ls",
		"policy show":         "csbs policy show daily --next 10",
		"policy update":       "csbs policy update daily --time 01:00 --time 13:00 --max-backups 14",
		"policy enable":       "csbs policy enable daily",
		"policy disable":      "csbs policy disable daily",
		"policy rm":           "csbs policy rm daily",
		"policy bind":         "csbs policy bind daily web1",
		"policy unbind":       "csbs policy unbind web1",
		"policy run-now":      "csbs policy run-now daily --wait",
		"policy retention":    "csbs policy retention daily",
		"backup ls":           "csbs backup ls --server web1 --type enhanced",
		"backup show":         "csbs backup show manualbk_1a2b",
		"backup rm":           "csbs backup rm manualbk_1a2b\n   csbs backup rm golden --force   # also a protected backup",
		"backup detach":       "csbs backup detach golden",
		"backup unbrowse":     "csbs backup unbrowse /mnt/golden",
		"backup protect":      "csbs backup protect golden\n   csbs backup protect golden --off",
		"restore pause":       "csbs restore pause rst-1a2b3c4d5e6f",
		"restore resume":      "csbs restore resume rst-1a2b3c4d5e6f",
		"restore finish":      "csbs restore finish rst-1a2b3c4d5e6f --wait",
		"restore cancel":      "csbs restore cancel rst-1a2b3c4d5e6f",
		"restore ls":          "csbs restore ls",
		"restore show":        "csbs restore show rst-1a2b3c4d5e6f",
		"export ls":           "csbs export ls --json",
		"remote ls":           "csbs remote ls",
		"remote show":         "csbs remote show dc1",
		"remote rm":           "csbs remote rm dc1",
		"replication ls":      "csbs replication ls",
		"replication show":    "csbs replication show dr --next 10",
		"replication rm":      "csbs replication rm dr",
		"umount":              "csbs umount /mnt/backups",
		"job ls":              "csbs job ls",
		"job show":            "csbs job show job-1a2b3c4d5e6f",
		"job wait":            "csbs job wait job-1a2b3c4d5e6f",
		"job cancel":          "csbs job cancel job-1a2b3c4d5e6f",
		"gc":                  "csbs gc\n   csbs gc --no-wait",
		"scrub":               "csbs scrub",
		"store stats":         "csbs store stats --json",
		"store rebuild-index": "csbs store rebuild-index   # after restoring the data dir from an older copy",
		"status":              "csbs status\n   csbs status --json",
		"version":             "csbs version",
	}
}

// addExamples fills in UsageText (shown under EXAMPLES in --help) from
// examples where a command has none.
func addExamples(cmds []*cli.Command, prefix string) {
	ex := examples()
	var walk func(cmds []*cli.Command, prefix string)
	walk = func(cmds []*cli.Command, prefix string) {
		for _, c := range cmds {
			path := strings.TrimSpace(prefix + " " + c.Name)
			if c.UsageText == "" && ex[path] != "" {
				c.UsageText = ex[path]
			}
			walk(c.Subcommands, path)
		}
	}
	walk(cmds, prefix)
}
