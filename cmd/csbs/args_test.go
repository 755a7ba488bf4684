package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestInterspersedArgs(t *testing.T) {
	t.Parallel()
	app := newApp()
	cases := []struct{ in, want string }{
		{"csbs backup create web1 --full --wait", "csbs backup create --full --wait web1"},
		{"csbs backup create web1 --name golden --wait", "csbs backup create --name golden --wait web1"},
		{"csbs token create --project p2", "csbs --project p2 token create"},
		{"csbs --json-less server ls", "csbs --json-less server ls"},
		{"csbs policy bind daily web1", "csbs policy bind daily web1"},
		{"csbs restore start golden --disk vda=/x --instant", "csbs restore start --disk vda=/x --instant golden"},
		{"csbs backup show web1 --project p2 --json", "csbs --project p2 backup show --json web1"},
		{"csbs mount /mnt/x --server web1", "csbs mount --server web1 /mnt/x"},
		{"csbs backup ls -- -odd", "csbs backup ls -- -odd"},
		// An unknown command is left as typed, so that it is what the
		// parser reports (not --json, moved in front of it).
		{"csbs bakup ls --json", "csbs bakup ls --json"},
		{"csbs backup lss web1 --json", "csbs backup lss web1 --json"},
		{"csbs backup create web1 --quiet", "csbs --quiet backup create web1"},
	}
	for _, tc := range cases {
		got := strings.Join(interspersed(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q:\n got  %q\n want %q", tc.in, got, tc.want)
		}
	}
}

// TestEveryCommandHasAnExample keeps --help useful: every command that
// runs something shows at least one example invocation.
func TestEveryCommandHasAnExample(t *testing.T) {
	t.Parallel()
	var walk func(prefix string, cs []*cli.Command)
	walk = func(prefix string, cs []*cli.Command) {
		for _, c := range cs {
			if c.Name == "help" {
				continue
			}
			if len(c.Subcommands) > 0 {
				walk(prefix+" "+c.Name, c.Subcommands)
				continue
			}
			if !strings.Contains(c.UsageText, "csbs ") {
				t.Errorf("%s %s: no example in --help", prefix, c.Name)
			}
		}
	}
	walk("csbs", newApp().Commands)
}

// TestClosestName: a suggestion only for what looks like a typo.
func TestClosestName(t *testing.T) {
	names := []string{"full", "name", "wait", "enable-instant-restore", "json", "help", "h"}
	for _, tc := range []struct{ in, want string }{
		{"ful", "full"},
		{"fulll", "full"},
		{"wiat", "wait"},
		{"enable-instant", "enable-instant-restore"},
		{"nmae", "name"},
		{"xyzzy", ""},
		{"hlp", ""},
		{"j", ""},
	} {
		if got := closest(tc.in, names); got != tc.want {
			t.Errorf("closest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := closest("bakup", []string{"backup", "restore", "server"}); got != "backup" {
		t.Errorf("closest(bakup) = %q", got)
	}
}
