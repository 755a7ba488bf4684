// Command csbs is the Cloud Server Backup Service appliance: `csbs serve`
// runs the daemon; every other command is a client of its API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/config"
	"csbs/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	app := newApp()
	err := app.RunContext(ctx, interspersed(app, os.Args))
	stop()
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			fmt.Fprintf(os.Stderr, "csbs: %s\n", ae.Message)
		} else {
			fmt.Fprintf(os.Stderr, "csbs: %v\n", err)
		}
		var ec cli.ExitCoder
		if errors.As(err, &ec) && ec.ExitCode() != 0 {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "csbs",
		Usage:                "Cloud Server Backup Service appliance",
		Version:              version,
		EnableBashCompletion: true,
		Suggest:              true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config `FILE` (finds the data dir and socket)", EnvVars: []string{"CSBS_CONFIG"}},
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` when no config is given", Value: "./var", EnvVars: []string{"CSBS_DATA_DIR"}},
			&cli.StringFlag{Name: "socket", Usage: "API unix `SOCKET` (default: <data-dir>/csbs.sock)", EnvVars: []string{"CSBS_SOCKET"}},
			&cli.StringFlag{Name: "token-file", Usage: "read the API token from `FILE` (default: the admin token in <data-dir>/admin.token)", EnvVars: []string{"CSBS_TOKEN_FILE"}},
			&cli.StringFlag{Name: "token", Usage: "API `TOKEN`; prefer CSBS_TOKEN or --token-file: a flag's value shows in the process list", EnvVars: []string{"CSBS_TOKEN"}},
			&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "act in `PROJECT` (admin tokens; default: default)", EnvVars: []string{"CSBS_PROJECT"}},
			&cli.StringFlag{Name: "region", Usage: "refuse to act unless the appliance serves `REGION`", EnvVars: []string{"CSBS_REGION"}},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only what a script needs (ids, URIs, secrets), not what was done"},
		},
		ExitErrHandler: func(*cli.Context, error) {}, // main prints errors once
		Commands: []*cli.Command{
			serveCommand(),
			projectCommand(),
			tokenCommand(),
			serverCommand(),
			policyCommand(),
			backupCommand(),
			restoreCommand(),
			remoteCommand(),
			replicationCommand(),
			exportCommand(),
			mountCommand(),
			umountCommand(),
			jobCommand(),
			maintenanceCommand("gc", "garbage collection: free blocks no backup uses (admin; also scheduled by gc.every)"),
			maintenanceCommand("scrub", "re-verify every stored block; mark damaged backups (admin; also scrub.every)"),
			storeCommand(),
			statusCommand(),
			versionCommand(),
			completionCommand(),
		},
	}
	addExamples(app.Commands, "")
	setHelp(app)
	return app
}

// loadConfig returns the config named by --config, or the embedded
// default with --data-dir applied; package config makes every path in it
// absolute.
func loadConfig(c *cli.Context) (config.Config, error) {
	file := configFile(c)
	if file == "" && c.IsSet("data-dir") {
		return config.LoadDataDir(c.String("data-dir"))
	}
	return config.Load(file)
}

// configFile is --config wherever it was given: `csbs serve` has its own
// flag of that name, which would otherwise hide `csbs --config F serve`.
func configFile(c *cli.Context) string {
	for _, x := range c.Lineage() {
		if x.IsSet("config") {
			return x.String("config")
		}
	}
	return c.String("config")
}

// client builds an API client from the global flags.
func client(c *cli.Context) (*api.Client, error) {
	cfg, err := loadConfig(c)
	if err != nil {
		return nil, err
	}
	socket := c.String("socket")
	if socket == "" {
		socket = cfg.API.Socket
	}
	token, err := apiToken(c, cfg)
	if err != nil {
		return nil, err
	}
	cl := api.NewUnixClient(socket, token)
	cl.Project = c.String("project")
	cl.Region = c.String("region")
	return cl, nil
}

// apiToken is --token (CSBS_TOKEN), else the file --token-file names,
// else the admin token in the data dir. When there is none, it says what
// is missing: usually the CLI runs away from the daemon's data dir.
func apiToken(c *cli.Context, cfg config.Config) (string, error) {
	if t := c.String("token"); t != "" {
		return t, nil
	}
	if f := globalString(c, "token-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("token file %s is empty", f)
		}
		return t, nil
	}
	path := filepath.Join(cfg.DataDir, daemon.AdminTokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	from := "./var, the default data dir, in the current directory"
	switch {
	case configFile(c) != "":
		from = "data_dir of " + configFile(c)
	case c.IsSet("data-dir"):
		from = "--data-dir"
	}
	switch {
	case errors.Is(err, fs.ErrPermission):
		return "", fmt.Errorf("cannot read the admin token %s: permission denied; run as the daemon's user (root), or give a token with CSBS_TOKEN or --token-file", path)
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("admin token: %w", err)
	}
	if _, serr := os.Stat(cfg.DataDir); errors.Is(serr, fs.ErrNotExist) {
		return "", fmt.Errorf("no csbs daemon found: no data dir %s (%s), so no admin token to use; run csbs where `csbs serve` keeps its data, or point at it with --data-dir DIR or --config FILE (CSBS_CONFIG), or give a project token with CSBS_TOKEN or --token-file", cfg.DataDir, from)
	}
	return "", fmt.Errorf("no admin token in the data dir %s (%s): has `csbs serve` started there? Give a token with CSBS_TOKEN or --token-file otherwise", cfg.DataDir, from)
}

// globalString is the global flag name as given before or after the
// command (or by its environment variable), not a command's own flag of
// the same name: `csbs remote add --token-file F` names the remote's
// token, not the one this CLI uses.
func globalString(c *cli.Context, name string) string {
	var app *cli.Context
	for _, x := range c.Lineage() {
		if x.Command != nil {
			app = x // the outermost with a command is the app's
		}
	}
	if app == nil {
		return c.String(name)
	}
	return app.String(name)
}
