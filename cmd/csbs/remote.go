package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/replication"
)

func remoteCommand() *cli.Command {
	return &cli.Command{
		Name:  "remote",
		Usage: "other appliances this one pulls backups from (replication)",
		Subcommands: []*cli.Command{
			{
				Name:  "add",
				Usage: "add a remote appliance (admin): its TLS API, the SHA-256 of its certificate, a replication token of one of its projects",
				UsageText: `csbs remote add dc1 --url https://10.0.0.5:8443 --token-file dc1.token \
     --fingerprint "$(openssl x509 -noout -fingerprint -sha256 -in dc1-api.crt)"
   (on dc1: csbs token create --project team-a --replication --quiet > dc1.token)`,
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "url", Usage: "`https://HOST:PORT` of the remote's api.tcp_listen", Required: true},
					&cli.StringFlag{Name: "token-file", Usage: "`FILE` holding a replication token of the remote (csbs token create --project P --replication)", Required: true},
					&cli.StringFlag{Name: "fingerprint", Usage: "`SHA256` of the remote's certificate (DER), hex with or without colons, as openssl x509 -noout -fingerprint -sha256 prints it", Required: true},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME --url https://HOST:PORT --token-file F --fingerprint SHA256"); err != nil {
						return err
					}
					tok, err := os.ReadFile(c.String("token-file"))
					if err != nil {
						return cli.Exit("--token-file: "+err.Error(), 2)
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					req := replication.AddRemoteRequest{Name: c.Args().First(), URL: c.String("url"), Fingerprint: c.String("fingerprint"), Token: strings.TrimSpace(string(tok))}
					var r api.RemoteView
					if err := cl.Do(c.Context, "POST", "/v1/remotes", nil, req, &r); err != nil {
						return err
					}
					return show(c, r, func(w io.Writer) error { return printRemote(w, r) })
				},
			},
			{
				Name: "ls", Usage: "list remotes", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var rs []api.RemoteView
					if err := cl.Do(c.Context, "GET", "/v1/remotes", nil, nil, &rs); err != nil {
						return err
					}
					return show(c, rs, func(w io.Writer) error {
						t := newTable(w, "ID", "NAME", "URL", "REGION", "PROJECT THERE", "REPLICATIONS")
						for _, r := range rs {
							t.row(r.ID, r.Name, r.URL, r.RemoteRegion, r.RemoteProject, orDash(strings.Join(r.Replications, ",")))
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a remote and check that it answers", ArgsUsage: "REMOTE",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "no-check", Usage: "do not connect to the remote"}, jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "REMOTE"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					q := url.Values{}
					if c.Bool("no-check") {
						q.Set("check", "false")
					}
					var r api.RemoteView
					if err := cl.Do(c.Context, "GET", "/v1/remotes/"+url.PathEscape(c.Args().First()), q, nil, &r); err != nil {
						return err
					}
					return show(c, r, func(w io.Writer) error { return printRemote(w, r) })
				},
			},
			{
				Name: "rm", Usage: "remove a remote (admin): its token and unfinished transfers go, its replicas stay", ArgsUsage: "REMOTE",
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "REMOTE"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.Do(c.Context, "DELETE", "/v1/remotes/"+url.PathEscape(c.Args().First()), nil, nil, nil)
				},
			},
		},
	}
}

func printRemote(w io.Writer, r api.RemoteView) error {
	fmt.Fprintf(w, "id:           %s\nname:         %s\nurl:          %s\nfingerprint:  %s\n", r.ID, r.Name, r.URL, r.Fingerprint)
	fmt.Fprintf(w, "region:       %s\nproject:      %s (on the remote)\nblocks:       %d bytes, %s\n", r.RemoteRegion, r.RemoteProject, r.BlockSize, r.Hash)
	fmt.Fprintf(w, "replications: %s\ncreated:      %s\n", orDash(strings.Join(r.Replications, ", ")), timeH(r.Created))
	if r.Status != nil {
		if r.Status.OK {
			fmt.Fprintln(w, "status:       ok (answers with the pinned certificate and accepts the token)")
		} else {
			fmt.Fprintf(w, "status:       failing: %s\n", r.Status.Error)
		}
	}
	return nil
}
