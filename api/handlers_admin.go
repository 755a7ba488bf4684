package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"csbs/access"
	"csbs/catalog"
)

// ProjectView is a project as the API shows it.
type ProjectView struct {
	catalog.Project
	InstantRestore bool `json:"instant_restore"`
	// HostAccess is what the project's tokens may name on the host
	// (access.* of the config, global and the project's own); the admin
	// token may name any path outside the appliance's data.
	HostAccess access.Grant `json:"host_access"`
}

func (s *Service) projectView(pr catalog.Project) ProjectView {
	g := access.Grant{}
	if s.Engine != nil && s.Engine.Access != nil {
		g = s.Engine.Access.For(pr.Name)
	}
	return ProjectView{Project: pr, InstantRestore: pr.IREnabled(), HostAccess: g}
}

func (s *Service) listProjects(_ context.Context, p principal, r *http.Request) (any, error) {
	pg, err := pageOf(r)
	if err != nil {
		return nil, err
	}
	if !p.admin {
		return []ProjectView{s.projectView(p.project)}, nil
	}
	var out []ProjectView
	var next string
	err = s.Catalog.View(func(tx *catalog.Txn) error {
		ps, n, err := tx.ProjectPage(pg)
		for _, pr := range ps {
			out = append(out, s.projectView(pr))
		}
		next = n
		return err
	})
	return paged{nonNil(out), next}, err
}

// showProject shows a project by name or id; a project token sees only
// its own.
func (s *Service) showProject(_ context.Context, p principal, r *http.Request) (any, error) {
	ref := r.PathValue("ref")
	if !p.admin {
		if ref != p.project.Name && ref != p.project.ID {
			return nil, fmt.Errorf("project %q %w", ref, catalog.ErrNotFound)
		}
		return s.projectView(p.project), nil
	}
	var out ProjectView
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		pr, err := tx.ProjectByName(ref)
		if errors.Is(err, catalog.ErrNotFound) {
			pr, err = tx.Project(ref)
		}
		out = s.projectView(pr)
		return err
	})
	return out, err
}

// CreateProjectRequest is the body of POST /v1/projects.
type CreateProjectRequest struct {
	Name string `json:"name"`
}

func (s *Service) createProject(_ context.Context, p principal, r *http.Request) (any, error) {
	if !p.admin {
		return nil, errAdminOnly
	}
	var req CreateProjectRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	var out catalog.Project
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		var err error
		out, err = tx.CreateProject(req.Name, s.now())
		return err
	})
	return out, err
}

func (s *Service) deleteProject(_ context.Context, p principal, r *http.Request) (any, error) {
	if !p.admin {
		return nil, errAdminOnly
	}
	return nil, s.Catalog.Release(func(tx *catalog.Txn) error {
		pr, err := tx.ProjectByName(r.PathValue("ref"))
		if err != nil {
			return err
		}
		return tx.DeleteProject(pr)
	})
}

// TokenView is a token without its hash.
type TokenView struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Project string    `json:"project"`
	Created time.Time `json:"created"`
	Revoked bool      `json:"revoked"`
	// Replication: a replication token (see CreateTokenRequest).
	Replication bool `json:"replication,omitempty"`
	// Secret is set only in the answer to POST /v1/tokens.
	Secret string `json:"secret,omitempty"`
}

// CreateTokenRequest is the body of POST /v1/tokens. Admin makes an
// admin token (admin tokens only); otherwise the token is for the
// request's project.
type CreateTokenRequest struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
	// Replication makes a replication token of the project: another
	// appliance uses it to pull the project's backups, and it can do
	// nothing else.
	Replication bool `json:"replication,omitempty"`
}

func tokenView(t catalog.Token, projectName string) TokenView {
	if t.Project == "" {
		projectName = "(admin)"
	}
	return TokenView{ID: t.ID, Name: t.Name, Project: projectName, Created: t.Created, Revoked: t.Revoked, Replication: t.Replication}
}

func (s *Service) listTokens(_ context.Context, p principal, _ *http.Request) (any, error) {
	var out []TokenView
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		ts, err := tx.Tokens(p.project.ID)
		if err != nil {
			return err
		}
		if p.admin {
			admins, err := tx.Tokens("")
			if err != nil {
				return err
			}
			ts = append(admins, ts...)
		}
		for _, t := range ts {
			out = append(out, tokenView(t, p.project.Name))
		}
		return nil
	})
	return nonNil(out), err
}

func (s *Service) createToken(_ context.Context, p principal, r *http.Request) (any, error) {
	var req CreateTokenRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Admin && !p.admin {
		return nil, errAdminOnly
	}
	if req.Admin && req.Replication {
		return nil, fmt.Errorf("%w: a token is an admin token or a replication token of a project, not both", catalog.ErrInvalid)
	}
	project := p.project.ID
	if req.Admin {
		project = ""
	}
	var out TokenView
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		create := tx.CreateToken
		if req.Replication {
			create = tx.CreateReplicationToken
		}
		t, secret, err := create(project, req.Name, s.now())
		out = tokenView(t, p.project.Name)
		out.Secret = secret
		return err
	})
	return out, err
}

func (s *Service) revokeToken(_ context.Context, p principal, r *http.Request) (any, error) {
	var out TokenView
	err := s.Catalog.Release(func(tx *catalog.Txn) error {
		t, err := tx.Token(r.PathValue("id"))
		if err != nil {
			return err
		}
		visible := t.Project == p.project.ID || (p.admin && t.Project == "")
		if !visible {
			return fmt.Errorf("token %s %w", t.ID, catalog.ErrNotFound)
		}
		if t.ID == p.token.ID {
			return &Error{http.StatusConflict, "conflict", "a token cannot revoke itself; use another token"}
		}
		t.Revoked = true
		out = tokenView(t, p.project.Name)
		return tx.PutToken(t)
	})
	return out, err
}

func nonNil[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}
