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
			verb[api.RemoteView]{
				Name:  "add",
				Usage: "add a remote appliance (admin): its TLS API, the SHA-256 of its certificate, a replication token of one of its projects",
				Examples: `csbs remote add dc1 --url https://10.0.0.5:8443 --token-file dc1.token \
     --fingerprint "$(openssl x509 -noout -fingerprint -sha256 -in dc1-api.crt)"
   (on dc1: csbs token create --project team-a --replication --quiet > dc1.token)`,
				Args: "NAME", JSON: true,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "url", Usage: "`https://HOST:PORT` of the remote's api.tcp_listen"},
					&cli.StringFlag{Name: "token-file", Usage: "`FILE` holding a replication token of the remote (csbs token create --project P --replication)"},
					&cli.StringFlag{Name: "fingerprint", Usage: "`SHA256` of the remote's certificate (DER), hex with or without colons, as openssl x509 -noout -fingerprint -sha256 prints it"},
					quietFlag("print only the remote's id"),
				},
				Required: []string{"url", "token-file", "fingerprint"},
				Method:   "POST", Path: apiPath("/v1/remotes"),
				Body: func(c *cli.Context) (any, error) {
					tok, err := os.ReadFile(c.String("token-file"))
					if err != nil {
						return nil, cli.Exit("--token-file: "+err.Error(), 2)
					}
					return replication.AddRemoteRequest{Name: arg(c, 0), URL: c.String("url"), Fingerprint: c.String("fingerprint"), Token: strings.TrimSpace(string(tok))}, nil
				},
				Done: func(_ *cli.Context, r api.RemoteView) string {
					return fmt.Sprintf("added remote %s (%s): region %s, project %s there; its certificate is pinned", r.Name, r.ID, r.RemoteRegion, r.RemoteProject)
				},
				Print: printRemote,
				Quiet: func(r api.RemoteView) string { return r.ID },
			}.command(),
			listing[api.RemoteView]{
				Usage:   "list remotes",
				Path:    apiPath("/v1/remotes"),
				Columns: []string{"ID", "NAME", "URL", "REGION", "PROJECT THERE", "REPLICATIONS"},
				Row: func(r api.RemoteView) []any {
					return []any{r.ID, r.Name, r.URL, r.RemoteRegion, r.RemoteProject, orDash(strings.Join(r.Replications, ","))}
				},
				Empty: "no remotes (add one: csbs remote add NAME --url https://HOST:PORT --token-file F --fingerprint SHA256)",
			}.command(),
			verb[api.RemoteView]{
				Name: "show", Usage: "show a remote and check that it answers", Args: "REMOTE", JSON: true,
				Flags: []cli.Flag{&cli.BoolFlag{Name: "no-check", Usage: "do not connect to the remote"}},
				Path:  apiPath("/v1/remotes/", 0),
				Query: func(c *cli.Context) url.Values {
					if c.Bool("no-check") {
						return url.Values{"check": {"false"}}
					}
					return nil
				},
				Print: printRemote,
			}.command(),
			verb[struct{}]{
				Name: "rm", Usage: "remove a remote (admin): its token and unfinished transfers go, its replicas stay", Args: "REMOTE",
				Method: "DELETE", Path: apiPath("/v1/remotes/", 0),
				Done: func(c *cli.Context, _ struct{}) string {
					return fmt.Sprintf("removed remote %s (its replicas stay)", arg(c, 0))
				},
			}.command(),
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
