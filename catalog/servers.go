package catalog

import (
	"errors"
	"slices"
	"strings"
)

// Servers lists a project's servers by name.
func (tx *Txn) Servers(project string) ([]Server, error) {
	ss, _, err := tx.ServerPage(project, Page{})
	return ss, err
}

// ServerPage lists a project's servers by name, a page at a time.
func (tx *Txn) ServerPage(project string, pg Page) ([]Server, string, error) {
	return pageOf[Server](tx, KindServer, ixPrefix(ixServerName, project), false, pg, nil)
}

// Server finds a server of the project by id or unique name.
func (tx *Txn) Server(project, ref string) (Server, error) {
	return byRef(tx, KindServer, ixServerName, project, ref, func(s Server) string { return s.Project })
}

// PutServer writes a server.
func (tx *Txn) PutServer(s Server) error { return put(tx, KindServer, s.ID, s) }

// CreateServer adds a server with a name unique in its project.
func (tx *Txn) CreateServer(s Server) (Server, error) {
	if err := ValidateName("server", s.Name); err != nil {
		return Server{}, err
	}
	if _, err := tx.Server(s.Project, s.Name); err == nil {
		return Server{}, conflictf("server %q exists", s.Name)
	}
	s.ID = NewID(KindServer)
	return s, put(tx, KindServer, s.ID, s)
}

// DeleteServer removes a server. Its backups stay (as in CSBS) until
// deleted; they keep the server's name.
func (tx *Txn) DeleteServer(s Server) error { return del(tx, KindServer, s.ID) }

// byRef looks an object up by id, then by name through the kind's name
// index (project / name / id), within a project. A name shared by
// several objects is ambiguous.
func byRef[T any](tx *Txn, kind, nameIndex, project, ref string, projectOf func(T) string) (T, error) {
	var zero T
	if strings.HasPrefix(ref, idPrefix[kind]) {
		v, err := get[T](tx, kind, ref)
		if err == nil {
			if projectOf(v) == project {
				return v, nil
			}
			return zero, notFoundf("%s %q", kind, ref)
		}
		if !errors.Is(err, ErrNotFound) {
			return zero, err
		}
	}
	vs, _, err := pageOf[T](tx, kind, ixPrefix(nameIndex, project, ref), false, Page{}, nil)
	if err != nil {
		return zero, err
	}
	switch len(vs) {
	case 0:
		return zero, notFoundf("%s %q", kind, ref)
	case 1:
		return vs[0], nil
	}
	return zero, conflictf("%d %ss are named %q; use the id", len(vs), kind, ref)
}

// Policies lists a project's policies by name.
func (tx *Txn) Policies(project string) ([]Policy, error) {
	ps, _, err := tx.PolicyPage(project, Page{})
	return ps, err
}

// PolicyPage lists a project's policies by name, a page at a time.
func (tx *Txn) PolicyPage(project string, pg Page) ([]Policy, string, error) {
	return pageOf[Policy](tx, KindPolicy, ixPrefix(ixPolicyName, project), false, pg, nil)
}

// AllPolicies lists the policies of every project (for the scheduler,
// which needs each of them).
func (tx *Txn) AllPolicies() ([]Policy, error) { return list[Policy](tx, KindPolicy, nil) }

// Policy finds a policy by id or name.
func (tx *Txn) Policy(project, ref string) (Policy, error) {
	return byRef(tx, KindPolicy, ixPolicyName, project, ref, func(p Policy) string { return p.Project })
}

// CreatePolicy validates and adds a policy with a unique name.
func (tx *Txn) CreatePolicy(p Policy) (Policy, error) {
	if err := NormalizePolicy(&p); err != nil {
		return Policy{}, err
	}
	if _, err := tx.Policy(p.Project, p.Name); err == nil {
		return Policy{}, conflictf("policy %q exists", p.Name)
	}
	p.ID = NewID(KindPolicy)
	return p, put(tx, KindPolicy, p.ID, p)
}

// UpdatePolicy validates and writes a changed policy.
func (tx *Txn) UpdatePolicy(p Policy) (Policy, error) {
	if err := NormalizePolicy(&p); err != nil {
		return Policy{}, err
	}
	if other, err := tx.Policy(p.Project, p.Name); err == nil && other.ID != p.ID {
		return Policy{}, conflictf("policy %q exists", p.Name)
	}
	return p, put(tx, KindPolicy, p.ID, p)
}

// DeletePolicy removes a policy and unbinds its servers.
func (tx *Txn) DeletePolicy(p Policy) error {
	servers, err := tx.BoundServers(p)
	if err != nil {
		return err
	}
	for _, s := range servers {
		s.PolicyID = ""
		if err := tx.PutServer(s); err != nil {
			return err
		}
	}
	if err := tx.DeleteSchedState(p.ID); err != nil {
		return err
	}
	return del(tx, KindPolicy, p.ID)
}

// BoundServers lists the servers bound to a policy, by name.
func (tx *Txn) BoundServers(p Policy) ([]Server, error) {
	ss, _, err := pageOf(tx, KindServer, ixPrefix(ixServerPolicy, p.ID), false, Page{}, func(s Server) bool {
		return s.Project == p.Project
	})
	slices.SortFunc(ss, func(a, b Server) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return ss, err
}
