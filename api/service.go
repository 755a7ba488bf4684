// Package api is the daemon's JSON-over-HTTP interface (versioned paths
// under /v1) and the client the CLI uses.
//
// Every request carries a bearer token. An admin token manages projects
// and may act in any project (named by the X-Csbs-Project header, default
// "default"); a project token acts only in its own project, and an object
// of another project is reported exactly like one that does not exist.
// Errors are {"error":{"code":"...","message":"..."}} with a status code
// chosen in one table (errorStatus).
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"time"

	"csbs/access"
	"csbs/catalog"
	"csbs/engine"
	"csbs/replication"
	"csbs/scheduler"
)

// Headers the client sends besides Authorization.
const (
	HeaderProject = "X-Csbs-Project"
	HeaderRegion  = "X-Csbs-Region"
)

// MaxRequestBytes bounds a request body.
const MaxRequestBytes = 1 << 20

// Service is the API: the HTTP handlers over the appliance's parts.
// (catalog.Server is a cloud server; nbd.ExportServer serves NBD.)
type Service struct {
	Catalog   *catalog.Catalog
	Runner    *scheduler.Runner
	Scheduler *scheduler.Scheduler
	Engine    *engine.Engine
	Serving   Serving
	Mounts    Mounter
	Region    string
	AZs       []string
	Clock     scheduler.Clock
	Log       *slog.Logger
	Version   string
	Started   time.Time
	// Status fills in the daemon-wide parts of GET /v1/status.
	Status func(ctx context.Context, admin bool, st *Status)
	// StoreStats answers GET /v1/store/stats.
	StoreStats func(ctx context.Context, project string, admin bool) (StoreStats, error)
	// Replication pulls backups from remotes (the destination side).
	Replication *replication.Service
}

// Error is an API error with a stable code.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

var (
	errUnauthorized = &Error{Status: http.StatusUnauthorized, Code: "unauthorized", Message: "missing, unknown or revoked token"}
	errAdminOnly    = &Error{Status: http.StatusForbidden, Code: "forbidden", Message: "this needs an admin token"}
)

// errorStatus is the one table that maps errors to HTTP statuses.
func errorStatus(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	switch {
	case errors.Is(err, access.ErrDenied):
		return &Error{http.StatusForbidden, "forbidden", strings.TrimPrefix(err.Error(), access.ErrDenied.Error()+": ")}
	case errors.Is(err, catalog.ErrNotFound):
		return &Error{http.StatusNotFound, "not_found", err.Error()}
	case errors.Is(err, catalog.ErrInvalid), errors.Is(err, catalog.ErrIRNeedsFull):
		return &Error{http.StatusBadRequest, "invalid", strings.TrimPrefix(err.Error(), "invalid: ")}
	case errors.Is(err, catalog.ErrConflict), errors.Is(err, scheduler.ErrServerBusy):
		return &Error{http.StatusConflict, "conflict", strings.TrimPrefix(err.Error(), "conflict: ")}
	case errors.Is(err, errBadBody):
		return &Error{http.StatusBadRequest, "bad_request", err.Error()}
	case errors.Is(err, replication.ErrRemote):
		return &Error{http.StatusBadGateway, "remote", err.Error()}
	case errors.Is(err, syscall.ENOSPC):
		return &Error{http.StatusInsufficientStorage, "insufficient_storage", err.Error()}
	}
	return &Error{http.StatusInternalServerError, "internal", err.Error()}
}

var errBadBody = errors.New("bad request body")

// principal is who is calling, and in which project.
type principal struct {
	admin   bool
	token   catalog.Token
	project catalog.Project
}

// caller is the principal as the host access rules see it.
func (p principal) caller() access.Caller {
	return access.Caller{Admin: p.admin, Project: p.project.Name}
}

type handlerFunc func(ctx context.Context, p principal, r *http.Request) (any, error)

// Handler returns the API's HTTP handler.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h handlerFunc) { mux.Handle(pattern, s.wrap(h)) }
	s.routes(route)
	s.replicationRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{http.StatusNotFound, "not_found", fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

func (s *Service) routes(route func(string, handlerFunc)) {
	route("GET /v1/status", s.status)
	route("GET /v1/projects", s.listProjects)
	route("POST /v1/projects", s.createProject)
	route("GET /v1/projects/{ref}", s.showProject)
	route("DELETE /v1/projects/{ref}", s.deleteProject)
	route("GET /v1/tokens", s.listTokens)
	route("POST /v1/tokens", s.createToken)
	route("DELETE /v1/tokens/{id}", s.revokeToken)
	route("GET /v1/servers", s.listServers)
	route("POST /v1/servers", s.addServer)
	route("POST /v1/servers/discover", s.discoverServer)
	route("GET /v1/servers/{ref}", s.showServer)
	route("DELETE /v1/servers/{ref}", s.removeServer)
	route("POST /v1/servers/{ref}/unbind", s.unbindServer)
	route("GET /v1/policies", s.listPolicies)
	route("POST /v1/policies", s.createPolicy)
	route("GET /v1/policies/{ref}", s.showPolicy)
	route("PATCH /v1/policies/{ref}", s.updatePolicy)
	route("DELETE /v1/policies/{ref}", s.deletePolicy)
	route("POST /v1/policies/{ref}/bind", s.bindPolicy)
	route("POST /v1/policies/{ref}/run-now", s.runPolicyNow)
	route("POST /v1/policies/{ref}/retention-preview", s.retentionPreview)
	route("GET /v1/backups", s.listBackups)
	route("POST /v1/backups", s.createBackup)
	route("GET /v1/backups/{ref}", s.showBackup)
	route("PATCH /v1/backups/{ref}", s.updateBackup)
	route("DELETE /v1/backups/{ref}", s.deleteBackup)
	route("POST /v1/backups/{ref}/attach", s.attachBackup)
	route("POST /v1/backups/{ref}/detach", s.detachBackup)
	route("GET /v1/exports", s.listExports)
	route("POST /v1/restores/{id}/{action}", s.controlRestore)
	route("POST /v1/gc", s.maintenance(catalog.JobGC))
	route("POST /v1/scrub", s.maintenance(catalog.JobScrub))
	route("GET /v1/store/stats", s.storeStats)
	route("POST /v1/store/rebuild-index", s.maintenance(catalog.JobRebuildIndex))
	route("GET /v1/mounts", s.listMounts)
	route("POST /v1/mounts", s.mount)
	route("POST /v1/mounts/unmount", s.unmount)
	route("POST /v1/backups/{ref}/browse", s.browse)
	route("POST /v1/browse/unmount", s.unbrowse)
	route("GET /v1/restores", s.listRestores)
	route("POST /v1/restores", s.startRestore)
	route("GET /v1/restores/{id}", s.showRestore)
	route("GET /v1/jobs", s.listJobs)
	route("GET /v1/jobs/{id}", s.showJob)
	route("POST /v1/jobs/{id}/wait", s.waitJob)
	route("POST /v1/jobs/{id}/cancel", s.cancelJob)
	s.replicationDestRoutes(route)
}

func (s *Service) wrap(h handlerFunc) http.Handler { return s.wrapAs(false, h) }

// wrapAs serves h to the tokens of its kind: replication tokens only on
// the replication endpoints, every other token everywhere else.
func (s *Service) wrapAs(replicationOnly bool, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
		if region := r.Header.Get(HeaderRegion); region != "" && region != s.Region {
			writeError(w, &Error{http.StatusBadRequest, "wrong_region", fmt.Sprintf("region %q is not served by this appliance (it serves %q)", region, s.Region)})
			return
		}
		p, err := s.authenticate(r)
		switch {
		case err != nil:
		case p.token.Replication && !replicationOnly:
			err = errReplicationTokenOnly
		case !p.token.Replication && replicationOnly:
			err = errNeedsReplicationToken
		}
		if err != nil {
			writeError(w, errorStatus(err))
			return
		}
		out, err := h(r.Context(), p, r)
		if err != nil {
			e := errorStatus(err)
			if e.Status >= 500 {
				s.Log.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, e)
			return
		}
		if p, ok := out.(paged); ok {
			out = writePaged(w, p)
		}
		w.Header().Set("Content-Type", "application/json")
		if out == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		_ = json.NewEncoder(w).Encode(out)
	})
}

func (s *Service) authenticate(r *http.Request) (principal, error) {
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || secret == "" {
		return principal{}, errUnauthorized
	}
	var p principal
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		t, err := tx.TokenBySecret(secret)
		if err != nil {
			return errUnauthorized
		}
		p.token = t
		want := r.Header.Get(HeaderProject)
		if t.Project == "" {
			p.admin = true
			if want == "" {
				want = catalog.DefaultProject
			}
			p.project, err = tx.ProjectByName(want)
			if errors.Is(err, catalog.ErrNotFound) && r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/projects") {
				return nil // listing projects needs no current project
			}
			return err
		}
		if p.project, err = tx.Project(t.Project); err != nil {
			return errUnauthorized // the project was removed
		}
		if want != "" && want != p.project.Name && want != p.project.ID {
			return fmt.Errorf("project %q %w", want, catalog.ErrNotFound)
		}
		return nil
	})
	return p, err
}

func writeError(w http.ResponseWriter, e *Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(map[string]*Error{"error": e})
}

// decode reads a JSON body strictly: unknown fields are an error.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("%w: larger than %d bytes", errBadBody, MaxRequestBytes)
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: empty body", errBadBody)
		}
		return fmt.Errorf("%w: %v", errBadBody, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON object", errBadBody)
	}
	return nil
}

// decodeOptional decodes a JSON body if there is one.
func decodeOptional(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return decode(r, v)
}

func (s *Service) now() time.Time { return s.Clock.Now().UTC() }
